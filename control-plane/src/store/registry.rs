//! `repositories` (image registries) and `image_whitelists` (the image allowlist).

use super::{conflict, internal, Store};
use crate::error::{Error, Result};
use crate::model::{ImagePattern, Repository};

const REPO_COLUMNS: &str = "id, name, url, username, password, created_at";

impl Store {
    pub async fn insert_repository(
        &self,
        name: &str,
        url: &str,
        username: Option<&str>,
        password_ciphertext: Option<&str>,
    ) -> Result<Repository> {
        sqlx::query_as(&format!(
            "INSERT INTO repositories (name, url, username, password) VALUES (?, ?, ?, ?) RETURNING {REPO_COLUMNS}"
        ))
        .bind(name)
        .bind(url)
        .bind(username)
        .bind(password_ciphertext)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("repository {name:?} already exists")))
    }

    pub async fn repository(&self, name: &str) -> Result<Repository> {
        sqlx::query_as(&format!(
            "SELECT {REPO_COLUMNS} FROM repositories WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Error::not_found(format!("repository {name:?} not found")))
    }

    pub async fn list_repositories(&self) -> Result<Vec<Repository>> {
        sqlx::query_as(&format!(
            "SELECT {REPO_COLUMNS} FROM repositories ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)
    }

    pub async fn delete_repository(&self, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM repositories WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("repository {name:?} not found")));
        }
        Ok(())
    }

    pub async fn insert_image_pattern(
        &self,
        pattern: &str,
        description: Option<&str>,
    ) -> Result<ImagePattern> {
        sqlx::query_as(
            "INSERT INTO image_whitelists (pattern, description) VALUES (?, ?) RETURNING *",
        )
        .bind(pattern)
        .bind(description)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("image pattern {pattern:?} already exists")))
    }

    pub async fn list_image_patterns(&self) -> Result<Vec<ImagePattern>> {
        sqlx::query_as("SELECT * FROM image_whitelists ORDER BY pattern")
            .fetch_all(&self.pool)
            .await
            .map_err(internal)
    }

    pub async fn delete_image_pattern(&self, pattern: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM image_whitelists WHERE pattern = ?")
            .bind(pattern)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!(
                "image pattern {pattern:?} not found"
            )));
        }
        Ok(())
    }
}
