//! The encrypted backup archive: a versioned stream of AES-256-GCM chunks under a key
//! derived from the root key and a random per-archive salt.
//!
//! Layout: the header (`BERTHBK` 0x00, format version, root key id, 32-byte salt), then chunks
//! of `u32 length || ciphertext+tag`, each at most [`CHUNK`] bytes of plaintext. A chunk's
//! nonce is its index (64-bit) and a final flag; its AAD is the header. So a chunk cannot be
//! moved, dropped, repeated, or taken from another archive, a missing end (truncation) is
//! detected because only the last chunk carries the final flag, and bytes after it are refused.
//! The root key is never in the archive.

use std::io::{self, Read, Write};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore as _;

use super::MasterKey;

const MAGIC: &[u8; 8] = b"BERTHBK\0";
/// The archive format this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const TAG_LEN: usize = 16;
const SALT_LEN: usize = 32;
const KDF_LABEL: &[u8] = b"berth-backup-archive-v1";

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Writes an archive: plaintext in through [`Write`], [`ArchiveWriter::finish`] at the end (an
/// archive without it is refused as truncated).
pub struct ArchiveWriter<W: Write> {
    out: W,
    cipher: Aes256Gcm,
    header: Vec<u8>,
    buf: Vec<u8>,
    index: u64,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(root: &MasterKey, mut out: W) -> io::Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        let mut header = Vec::with_capacity(64);
        header.extend_from_slice(MAGIC);
        header.push(FORMAT_VERSION);
        header.push(root.id().len() as u8);
        header.extend_from_slice(root.id().as_bytes());
        header.extend_from_slice(&salt);
        out.write_all(&header)?;
        Ok(ArchiveWriter {
            out,
            cipher: root.derive(KDF_LABEL, &salt),
            header,
            buf: Vec::with_capacity(CHUNK),
            index: 0,
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let n = self.buf.len().min(CHUNK);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce(self.index, last)),
                Payload {
                    msg: &self.buf[..n],
                    aad: &self.header,
                },
            )
            .map_err(|_| io::Error::other("aes-gcm encryption failed"))?;
        self.out.write_all(&(sealed.len() as u32).to_be_bytes())?;
        self.out.write_all(&sealed)?;
        self.buf.drain(..n);
        self.index += 1;
        Ok(())
    }

    /// Seals the last chunk and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        while self.buf.len() > CHUNK {
            self.seal(false)?;
        }
        self.seal(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ArchiveWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        // Keep one chunk back: the last one is sealed by `finish`, with the final flag.
        while self.buf.len() > CHUNK {
            self.seal(false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads an archive back: plaintext out through [`Read`]. Every error is an `InvalidData`
/// naming what is wrong (wrong key, truncated, tampered, unknown version).
pub struct ArchiveReader<R: Read> {
    input: R,
    cipher: Aes256Gcm,
    header: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    index: u64,
    done: bool,
}

impl<R: Read> ArchiveReader<R> {
    pub fn new(root: &MasterKey, mut input: R) -> io::Result<Self> {
        let mut fixed = [0u8; 10];
        input
            .read_exact(&mut fixed)
            .map_err(|_| invalid("not a berth backup archive (too short)"))?;
        if &fixed[..8] != MAGIC {
            return Err(invalid("not a berth backup archive"));
        }
        if fixed[8] != FORMAT_VERSION {
            return Err(invalid(format!(
                "backup archive format {} is not supported by this berth (it reads format {FORMAT_VERSION})",
                fixed[8]
            )));
        }
        let mut id = vec![0u8; fixed[9] as usize];
        let mut salt = [0u8; SALT_LEN];
        input
            .read_exact(&mut id)
            .and_then(|_| input.read_exact(&mut salt))
            .map_err(|_| invalid("the backup archive is truncated (in its header)"))?;
        let id = String::from_utf8_lossy(&id).into_owned();
        if id != root.id() {
            return Err(invalid(format!(
                "the backup archive was made under root key {id}, but the given master key is {}: \
                 give the master key of the node the backup was taken from",
                root.id()
            )));
        }
        let mut header = fixed.to_vec();
        header.extend_from_slice(id.as_bytes());
        header.extend_from_slice(&salt);
        Ok(ArchiveReader {
            input,
            cipher: root.derive(KDF_LABEL, &salt),
            header,
            plain: Vec::new(),
            pos: 0,
            index: 0,
            done: false,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut len = [0u8; 4];
        if let Err(e) = self.input.read_exact(&mut len) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("the backup archive is truncated (its last chunk is missing)")
            } else {
                e
            });
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=CHUNK + TAG_LEN).contains(&len) {
            return Err(invalid(format!(
                "the backup archive is damaged (chunk {} has a bad length)",
                self.index
            )));
        }
        let mut sealed = vec![0u8; len];
        self.input.read_exact(&mut sealed).map_err(|_| {
            invalid(format!(
                "the backup archive is truncated (in chunk {})",
                self.index
            ))
        })?;
        let open = |last| {
            self.cipher.decrypt(
                Nonce::from_slice(&nonce(self.index, last)),
                Payload {
                    msg: &sealed,
                    aad: &self.header,
                },
            )
        };
        let (plain, last) = match open(false) {
            Ok(p) => (p, false),
            Err(_) => match open(true) {
                Ok(p) => (p, true),
                Err(_) => {
                    return Err(invalid(format!(
                    "the backup archive was modified or damaged (chunk {} fails authentication)",
                    self.index
                )))
                }
            },
        };
        self.index += 1;
        self.plain = plain;
        self.pos = 0;
        if last {
            self.done = true;
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(invalid(
                    "the backup archive has data after its last chunk (modified)",
                ));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for ArchiveReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes(&[b; 32]).unwrap()
    }

    fn archive(data: &[u8]) -> Vec<u8> {
        let mut w = ArchiveWriter::new(&key(1), Vec::new()).unwrap();
        // In uneven pieces, across chunk boundaries.
        for piece in data.chunks(333_333) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn read(bytes: &[u8], k: &MasterKey) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ArchiveReader::new(k, bytes)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn data() -> Vec<u8> {
        (0..(2 * CHUNK + 12_345)).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn round_trips_and_hides_the_content() {
        for len in [0, 1, CHUNK, 2 * CHUNK + 12_345] {
            let plain: Vec<u8> = data().into_iter().take(len).collect();
            let bytes = archive(&plain);
            assert_eq!(read(&bytes, &key(1)).unwrap(), plain, "{len}");
        }
        let secret = b"postgres://user:hunter2@db/prod";
        let bytes = archive(secret);
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn a_wrong_key_is_refused_by_name() {
        let err = read(&archive(b"x"), &key(2)).unwrap_err().to_string();
        assert!(err.contains("given master key"), "{err}");
    }

    #[test]
    fn truncation_anywhere_is_detected() {
        let bytes = archive(&data());
        // At a chunk boundary (whole chunks dropped), inside a chunk, inside the header.
        let first_chunk_end = 8 + 1 + 1 + 8 + SALT_LEN + 4 + CHUNK + TAG_LEN;
        for cut in [first_chunk_end, bytes.len() - 1, bytes.len() - 100, 20, 0] {
            let err = read(&bytes[..cut], &key(1)).unwrap_err().to_string();
            assert!(
                err.contains("truncated") || err.contains("not a berth backup"),
                "{cut}: {err}"
            );
        }
    }

    #[test]
    fn tampering_reordering_and_appending_are_detected() {
        let bytes = archive(&data());
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(read(&flipped, &key(1))
            .unwrap_err()
            .to_string()
            .contains("modified"));
        let mut appended = bytes.clone();
        appended.push(0);
        assert!(read(&appended, &key(1)).is_err());
        // Swap the first two chunks.
        let header = 8 + 1 + 1 + 8 + SALT_LEN;
        let chunk = 4 + CHUNK + TAG_LEN;
        let mut swapped = bytes[..header].to_vec();
        swapped.extend_from_slice(&bytes[header + chunk..header + 2 * chunk]);
        swapped.extend_from_slice(&bytes[header..header + chunk]);
        swapped.extend_from_slice(&bytes[header + 2 * chunk..]);
        assert!(read(&swapped, &key(1)).is_err());
        // A future format is named.
        let mut future = bytes.clone();
        future[8] = 9;
        let err = read(&future, &key(1)).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");
    }
}
