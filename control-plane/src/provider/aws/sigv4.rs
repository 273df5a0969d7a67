//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`, in the `Authorization` header), written from
//! AWS's description of the signing process and checked against AWS's own published examples
//! (the IAM `ListUsers` example and the SigV4 test suite) in the tests below.
//!
//! 1. Canonical request: method, canonical URI (each path segment percent-encoded, keeping
//!    only `A-Za-z0-9-_.~`), canonical query (pairs sorted), canonical headers (names
//!    lowercased and sorted, values trimmed with inner runs of spaces made one, repeated names
//!    joined by `,`), the signed header names, and the hex SHA-256 of the body.
//! 2. String to sign: algorithm, `x-amz-date`, scope `date/region/service/aws4_request`, hex
//!    SHA-256 of the canonical request.
//! 3. Signing key: `HMAC("AWS4" + secret, date)`, then the region, the service and
//!    `aws4_request` in turn; the signature is the hex HMAC of the string to sign with it.
//!
//! Architecture invariant: the secret access key only ever enters an HMAC key; the signature,
//! which is all that leaves this module, cannot be turned back into it.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Who signs, for which region and service.
pub struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// One request as it goes on the wire.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (`/` for the JSON APIs).
    pub path: &'a str,
    /// `name=value` pairs joined by `&`, each already percent-encoded the AWS way; empty for
    /// none. The signer only sorts them.
    pub query: &'a str,
    /// Every header to sign; `host` and `x-amz-date` must be among them.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl Signer<'_> {
    /// The `Authorization` header for `request`, sent at `amz_date` (`YYYYMMDDTHHMMSSZ`, the
    /// request's `x-amz-date` header).
    pub fn authorization(&self, request: &Request<'_>, amz_date: &str) -> String {
        let (canonical, signed_headers) = canonical_request(request);
        let date = &amz_date[..amz_date.len().min(8)];
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = signing_key(self.secret_access_key, date, self.region, self.service);
        let signature = hex::encode(hmac(&key[..], string_to_sign.as_bytes()));
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key_id
        )
    }
}

/// `x-amz-date` for a moment: `20150830T123600Z`.
pub fn amz_date(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The canonical request and the `SignedHeaders` list.
fn canonical_request(request: &Request<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), trim_all(value)))
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut canonical_headers = String::new();
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in &headers {
        if names.last() == Some(&name.as_str()) {
            // A repeated header: its values, in the order given, joined by commas.
            canonical_headers.pop();
            canonical_headers.push(',');
        } else {
            names.push(name);
            canonical_headers.push_str(name);
            canonical_headers.push(':');
        }
        canonical_headers.push_str(value);
        canonical_headers.push('\n');
    }
    let signed_headers = names.join(";");

    let mut pairs: Vec<(&str, &str)> = request
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        canonical_uri(request.path),
        query.join("&"),
        hex::encode(Sha256::digest(request.body)),
    );
    (canonical, signed_headers)
}

fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// Percent-encodes everything but `A-Za-z0-9-_.~`, as SigV4 requires.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Leading and trailing space removed, inner runs of spaces made one.
fn trim_all(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = Zeroizing::new(hmac(k_secret.as_bytes(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&k_date[..], region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&k_region[..], service.as_bytes()));
    Zeroizing::new(hmac(&k_service[..], b"aws4_request"))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documentation example key pair.
    const KEY_ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn signer(service: &'static str) -> Signer<'static> {
        Signer {
            access_key_id: KEY_ID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service,
        }
    }

    fn signature(authorization: &str) -> &str {
        authorization.rsplit("Signature=").next().unwrap()
    }

    /// The worked example of AWS's "Create a signed AWS API request" guide: `GET
    /// https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08`, with every
    /// intermediate value AWS publishes for it.
    #[test]
    fn aws_documented_example_iam_list_users() {
        let headers = [
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("Host", "iam.amazonaws.com"),
            ("X-Amz-Date", DATE),
        ];
        let request = Request {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let (canonical, signed) = canonical_request(&request);
        assert_eq!(
            canonical,
            "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
             content-type:application/x-www-form-urlencoded; charset=utf-8\n\
             host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             content-type;host;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(signed, "content-type;host;x-amz-date");
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(
            hex::encode(*signing_key(SECRET, "20150830", "us-east-1", "iam")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        assert_eq!(
            signer("iam").authorization(&request, DATE),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// A case of AWS's SigV4 test suite (`aws-sig-v4-test-suite`): service `service`, region
    /// `us-east-1`, host `example.amazonaws.com`, with its published signature.
    struct SuiteCase {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        query: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        signature: &'static str,
    }

    const SUITE: [SuiteCase; 6] = [
        SuiteCase {
            name: "get-vanilla",
            method: "GET",
            path: "/",
            query: "",
            headers: &[],
            body: "",
            signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        },
        SuiteCase {
            name: "get-vanilla-query-order-key-case",
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: &[],
            body: "",
            signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        },
        SuiteCase {
            name: "get-utf8",
            method: "GET",
            path: "/\u{1234}",
            query: "",
            headers: &[],
            body: "",
            signature: "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        },
        SuiteCase {
            name: "get-header-value-trim",
            method: "GET",
            path: "/",
            query: "",
            headers: &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            body: "",
            signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        },
        SuiteCase {
            name: "post-vanilla",
            method: "POST",
            path: "/",
            query: "",
            headers: &[],
            body: "",
            signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        },
        SuiteCase {
            name: "post-x-www-form-urlencoded",
            method: "POST",
            path: "/",
            query: "",
            headers: &[("Content-Type", "application/x-www-form-urlencoded")],
            body: "Param1=value1",
            signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        },
    ];

    #[test]
    fn aws_test_suite_vectors() {
        for case in &SUITE {
            let mut headers = vec![("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)];
            headers.extend_from_slice(case.headers);
            let request = Request {
                method: case.method,
                path: case.path,
                query: case.query,
                headers: &headers,
                body: case.body.as_bytes(),
            };
            let authorization = signer("service").authorization(&request, DATE);
            assert_eq!(signature(&authorization), case.signature, "{}", case.name);
            assert!(
                authorization.starts_with(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders="
                ),
                "{}: {authorization}",
                case.name
            );
        }
    }

    #[test]
    fn every_input_changes_the_signature_and_none_appears_in_it() {
        let headers = [
            ("host", "secretsmanager.eu-central-1.amazonaws.com"),
            ("x-amz-date", DATE),
            ("x-amz-target", "secretsmanager.ListSecrets"),
        ];
        let request = |body: &'static [u8]| Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let base = Signer {
            access_key_id: KEY_ID,
            secret_access_key: SECRET,
            region: "eu-central-1",
            service: "secretsmanager",
        };
        let reference = base.authorization(&request(b"{}"), DATE);
        assert!(!reference.contains(SECRET), "{reference}");
        let others = [
            base.authorization(&request(b"{ }"), DATE),
            base.authorization(&request(b"{}"), "20150830T123601Z"),
            Signer {
                secret_access_key: "another",
                ..base
            }
            .authorization(&request(b"{}"), DATE),
            Signer {
                region: "eu-west-1",
                ..base
            }
            .authorization(&request(b"{}"), DATE),
        ];
        for other in others {
            assert_ne!(signature(&other), signature(&reference));
        }
    }

    #[test]
    fn amz_date_is_utc_to_the_second() {
        let at = time::macros::datetime!(2015-08-30 14:36:00 +02:00);
        assert_eq!(amz_date(at), DATE);
    }
}
