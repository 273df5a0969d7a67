//! Reading the V1 database: opened read-only (`SQLITE_OPEN_READONLY`: SQLite never writes the
//! file, nor creates a journal beside it), checked to be a sound SQLite file of the V1 schema,
//! then read table by table. Tables and columns the seed does not show ("assumed" in
//! `tests/fixtures/v1/schema.sql`) may be missing: what is missing is recorded, not an error.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use secrecy::SecretString;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Row as _, SqliteConnection};

/// Tables whose presence marks a berth (or V2) database, never a V1 one.
const V2_TABLES: &[&str] = &["secret_groups", "deployment_logs", "_sqlx_migrations"];

/// The V1 tables and columns the import cannot do without.
const REQUIRED: &[(&str, &[&str])] = &[
    ("secrets", &["id", "name", "reference"]),
    ("applications", &["id", "name", "image"]),
    (
        "environment_variables",
        &["id", "scope", "project_id", "key", "value"],
    ),
];

/// A `secrets` row; `reference` is the value.
pub struct V1Secret {
    pub id: i64,
    pub name: String,
    pub reference: SecretString,
    pub metadata: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

pub struct V1Repository {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

pub struct V1Application {
    pub id: i64,
    pub name: String,
    pub image: String,
    pub version: Option<String>,
    pub repository_id: Option<i64>,
    /// JSON text, as stored.
    pub ports: Option<String>,
    /// JSON text, as stored; plaintext values.
    pub env_vars: Option<SecretString>,
    pub status: Option<String>,
    pub last_deployed_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

pub struct V1EnvVar {
    pub id: i64,
    pub scope: String,
    pub project_id: Option<i64>,
    pub key: String,
    pub value: SecretString,
}

pub struct V1ImagePattern {
    pub id: i64,
    pub pattern: String,
}

pub struct V1Domain {
    pub id: i64,
    pub application_id: i64,
    pub domain: String,
}

pub struct V1Provider {
    pub id: i64,
    pub name: String,
    pub provider_type: String,
    /// JSON with the credential inside, in plaintext.
    pub config: SecretString,
}

/// Everything read. `None`: the table does not exist.
pub struct V1Data {
    pub secrets: Vec<V1Secret>,
    pub repositories: Option<Vec<V1Repository>>,
    pub applications: Vec<V1Application>,
    pub variables: Vec<V1EnvVar>,
    pub image_patterns: Option<Vec<V1ImagePattern>>,
    pub domains: Option<Vec<V1Domain>>,
    pub providers: Option<Vec<V1Provider>>,
    /// Keys of `system_settings`.
    pub settings: Option<Vec<String>>,
    /// `table.column` of optional columns that do not exist.
    pub missing_columns: Vec<String>,
}

/// One table's rows, every column as text (`None`: NULL, or a column that does not exist).
struct Rows {
    table: &'static str,
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// Column `i` of row `r`, which the schema says is NOT NULL.
    fn text(&self, r: usize, i: usize, column: &str) -> anyhow::Result<String> {
        self.rows[r][i].clone().ok_or_else(|| {
            anyhow!(
                "V1 {} row {}: {column} is NULL",
                self.table,
                self.rows[r][0].as_deref().unwrap_or("?")
            )
        })
    }

    fn id(&self, r: usize, i: usize, column: &str) -> anyhow::Result<Option<i64>> {
        self.rows[r][i]
            .as_deref()
            .map(|v| {
                v.parse().map_err(|_| {
                    anyhow!(
                        "V1 {} row {}: {column} is not an integer",
                        self.table,
                        self.rows[r][0].as_deref().unwrap_or("?")
                    )
                })
            })
            .transpose()
    }

    fn required_id(&self, r: usize, i: usize, column: &str) -> anyhow::Result<i64> {
        self.id(r, i, column)?
            .ok_or_else(|| anyhow!("V1 {} row: {column} is NULL", self.table))
    }

    fn opt(&self, r: usize, i: usize) -> Option<String> {
        self.rows[r][i].clone()
    }
}

pub struct V1Database {
    conn: SqliteConnection,
    tables: HashSet<String>,
    missing_columns: Vec<String>,
}

/// SQLite's primary result code of an error, if it is one.
fn sqlite_code(e: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    db.code()?.parse::<i64>().ok().map(|c| c & 0xff)
}

/// Opens `path` read-only and refuses anything that is not a sound V1 database.
pub async fn open(path: &Path) -> anyhow::Result<V1Database> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        bail!("{shown} is not a file");
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn = options.connect().await.map_err(|e| unreadable(path, &e))?;
    // Every page, once: a truncated or damaged file is refused before anything is read.
    let check: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| unreadable(path, &e))?;
    if check != ["ok"] {
        bail!(
            "{shown} is a corrupt SQLite database (quick_check: {}); import from a sound copy",
            check.first().map(String::as_str).unwrap_or("no answer")
        );
    }
    let tables: HashSet<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| unreadable(path, &e))?
            .into_iter()
            .collect();
    if let Some(v2) = V2_TABLES.iter().find(|t| tables.contains(**t)) {
        bail!(
            "this is not a V1 database: {shown} has a table {v2}, so it is a berth (V2) database; \
             import-v1 reads the database of the V1 system"
        );
    }
    if !REQUIRED.iter().any(|(t, _)| tables.contains(*t)) {
        let names: Vec<&str> = REQUIRED.iter().map(|(t, _)| *t).collect();
        bail!(
            "this is not a V1 database: {shown} has none of the V1 tables {}",
            names.join(", ")
        );
    }
    let mut db = V1Database {
        conn,
        tables,
        missing_columns: Vec::new(),
    };
    for (table, columns) in REQUIRED {
        if !db.tables.contains(*table) {
            bail!("this is not a V1 database: {shown} has no table {table}");
        }
        let present = db.columns(table).await?;
        if let Some(c) = columns.iter().find(|c| !present.contains(**c)) {
            bail!("this is not a V1 database: table {table} of {shown} has no column {c}");
        }
    }
    if db.columns("secrets").await?.contains("group_id") {
        bail!(
            "this is not a V1 database: secrets of {shown} has a group_id column, as berth's (V2) have"
        );
    }
    Ok(db)
}

fn unreadable(path: &Path, e: &sqlx::Error) -> anyhow::Error {
    let shown = path.display();
    match sqlite_code(e) {
        Some(26) => anyhow!("{shown} is not a SQLite database"),
        Some(11) => anyhow!("{shown} is a corrupt SQLite database ({e}); import from a sound copy"),
        _ => anyhow!("cannot read {shown}: {e}"),
    }
}

impl V1Database {
    /// Tries to write through the connection the import reads with.
    #[cfg(test)]
    pub async fn try_write(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE TABLE berth_was_here (id INTEGER)")
            .execute(&mut self.conn)
            .await
            .map(|_| ())
    }

    async fn columns(&mut self, table: &str) -> anyhow::Result<HashSet<String>> {
        let rows = sqlx::query(&format!("PRAGMA table_info(\"{table}\")"))
            .fetch_all(&mut self.conn)
            .await
            .with_context(|| format!("cannot read the columns of {table}"))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("name").map_err(Into::into))
            .collect()
    }

    /// Every row of `table` by id, the wanted columns as text; a wanted column that does not
    /// exist reads as NULL and is recorded. `None` when the table does not exist.
    async fn rows(
        &mut self,
        table: &'static str,
        columns: &[&str],
    ) -> anyhow::Result<Option<Rows>> {
        if !self.tables.contains(table) {
            return Ok(None);
        }
        let present = self.columns(table).await?;
        let select: Vec<String> = columns
            .iter()
            .map(|c| {
                if present.contains(*c) {
                    format!("CAST(\"{c}\" AS TEXT)")
                } else {
                    self.missing_columns.push(format!("{table}.{c}"));
                    "NULL".to_string()
                }
            })
            .collect();
        let order = if present.contains("id") {
            "ORDER BY id"
        } else {
            "ORDER BY rowid"
        };
        let rows = sqlx::query(&format!(
            "SELECT {} FROM \"{table}\" {order}",
            select.join(", ")
        ))
        .fetch_all(&mut self.conn)
        .await
        .with_context(|| format!("cannot read table {table}"))?;
        let rows = rows
            .iter()
            .map(|row| {
                (0..columns.len())
                    .map(|i| row.try_get::<Option<String>, _>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("cannot read table {table} (a value that is not text)"))?;
        Ok(Some(Rows { table, rows }))
    }

    /// Reads every table the import knows, then closes the file.
    pub async fn read(mut self) -> anyhow::Result<V1Data> {
        let t = self
            .rows(
                "secrets",
                &[
                    "id",
                    "name",
                    "reference",
                    "metadata",
                    "created_at",
                    "updated_at",
                ],
            )
            .await?
            .expect("checked at open");
        let mut secrets = Vec::with_capacity(t.rows.len());
        for r in 0..t.rows.len() {
            secrets.push(V1Secret {
                id: t.required_id(r, 0, "id")?,
                name: t.text(r, 1, "name")?,
                reference: SecretString::from(t.text(r, 2, "reference")?),
                metadata: t.opt(r, 3),
                created_at: t.opt(r, 4),
                updated_at: t.opt(r, 5),
            });
        }

        let repositories = match self
            .rows(
                "repositories",
                &["id", "name", "url", "username", "password"],
            )
            .await?
        {
            None => None,
            Some(t) => Some(
                (0..t.rows.len())
                    .map(|r| {
                        Ok(V1Repository {
                            id: t.required_id(r, 0, "id")?,
                            name: t.text(r, 1, "name")?,
                            url: t.text(r, 2, "url")?,
                            username: t.opt(r, 3),
                            password: t.opt(r, 4).map(SecretString::from),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
        };

        let t = self
            .rows(
                "applications",
                &[
                    "id",
                    "name",
                    "image",
                    "version",
                    "repository_id",
                    "ports",
                    "env_vars",
                    "status",
                    "last_deployed_at",
                    "created_at",
                    "updated_at",
                ],
            )
            .await?
            .expect("checked at open");
        let mut applications = Vec::with_capacity(t.rows.len());
        for r in 0..t.rows.len() {
            applications.push(V1Application {
                id: t.required_id(r, 0, "id")?,
                name: t.text(r, 1, "name")?,
                image: t.text(r, 2, "image")?,
                version: t.opt(r, 3),
                repository_id: t.id(r, 4, "repository_id")?,
                ports: t.opt(r, 5),
                env_vars: t.opt(r, 6).map(SecretString::from),
                status: t.opt(r, 7),
                last_deployed_at: t.opt(r, 8),
                created_at: t.opt(r, 9),
                updated_at: t.opt(r, 10),
            });
        }

        let t = self
            .rows(
                "environment_variables",
                &["id", "scope", "project_id", "key", "value"],
            )
            .await?
            .expect("checked at open");
        let mut variables = Vec::with_capacity(t.rows.len());
        for r in 0..t.rows.len() {
            variables.push(V1EnvVar {
                id: t.required_id(r, 0, "id")?,
                scope: t.text(r, 1, "scope")?,
                project_id: t.id(r, 2, "project_id")?,
                key: t.text(r, 3, "key")?,
                value: SecretString::from(t.text(r, 4, "value")?),
            });
        }

        let image_patterns = match self.rows("image_whitelists", &["id", "pattern"]).await? {
            None => None,
            Some(t) => Some(
                (0..t.rows.len())
                    .map(|r| {
                        Ok(V1ImagePattern {
                            id: t.required_id(r, 0, "id")?,
                            pattern: t.text(r, 1, "pattern")?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
        };

        let domains = match self
            .rows("domains", &["id", "application_id", "domain"])
            .await?
        {
            None => None,
            Some(t) => Some(
                (0..t.rows.len())
                    .map(|r| {
                        Ok(V1Domain {
                            id: t.required_id(r, 0, "id")?,
                            application_id: t.required_id(r, 1, "application_id")?,
                            domain: t.text(r, 2, "domain")?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
        };

        let providers = match self
            .rows("secret_providers", &["id", "name", "type", "config"])
            .await?
        {
            None => None,
            Some(t) => Some(
                (0..t.rows.len())
                    .map(|r| {
                        Ok(V1Provider {
                            id: t.required_id(r, 0, "id")?,
                            name: t.text(r, 1, "name")?,
                            provider_type: t.text(r, 2, "type")?,
                            config: SecretString::from(t.opt(r, 3).unwrap_or_else(|| "{}".into())),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
        };

        let settings = match self.rows("system_settings", &["key"]).await? {
            None => None,
            Some(t) => Some(t.rows.into_iter().filter_map(|r| r[0].clone()).collect()),
        };

        let missing_columns = std::mem::take(&mut self.missing_columns);
        self.conn
            .close()
            .await
            .context("cannot close the V1 database")?;
        Ok(V1Data {
            secrets,
            repositories,
            applications,
            variables,
            image_patterns,
            domains,
            providers,
            settings,
            missing_columns,
        })
    }
}
