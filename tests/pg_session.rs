//! What every PostgreSQL connection nicebill opens is, whatever the server's, database's or
//! URL's own settings: `synchronous_commit = on` (an attempt is "committed before sent" only if
//! its commit is durable), and TLS when the URL asks for it (libpq is built with TLS, so the
//! `sslmode=require` nicebill adds for remote hosts can be met).

mod support;

use diesel::prelude::*;
use diesel::sql_types::Text;
use nicebill::storage::{AnyConnection, DbUrl, Store, StoreError};

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Text)]
    value: String,
}

async fn try_one(store: &Store, sql: &'static str) -> Result<String, StoreError> {
    store
        .run(move |c| {
            let rows: Vec<One> = match c {
                AnyConnection::Postgres(pg) => diesel::sql_query(sql).load(pg)?,
                AnyConnection::Sqlite(_) => unreachable!("a PostgreSQL store"),
            };
            Ok(rows.into_iter().next().map(|r| r.value).unwrap_or_default())
        })
        .await
}

async fn one(store: &Store, sql: &'static str) -> String {
    try_one(store, sql).await.unwrap()
}

fn with_param(base: &str, param: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{param}")
}

#[tokio::test]
async fn synchronous_commit_is_on_whatever_the_url_says() {
    let Some(base) = support::postgres_url("pg_session") else {
        return;
    };
    // The URL asks the server to make commits asynchronous for this session.
    let url = with_param(&base, "options=-c%20synchronous_commit%3Doff");
    let raw = Store::open(DbUrl::parse(&url).unwrap(), 1).unwrap();
    assert_eq!(
        one(
            &raw,
            "SELECT current_setting('synchronous_commit') AS value"
        )
        .await,
        "on"
    );
}

#[tokio::test]
async fn tls_is_used_when_the_url_requires_it() {
    let Some(base) = support::postgres_url("pg_session") else {
        return;
    };
    let sql = "SELECT CASE WHEN ssl THEN 'tls' ELSE 'clear' END AS value \
               FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let required = Store::open(
        DbUrl::parse(&with_param(&base, "sslmode=require")).unwrap(),
        1,
    )
    .unwrap();
    match try_one(&required, sql).await {
        Err(e) if e.to_string().contains("server does not support SSL") => {
            eprintln!("pg_session: skipped the TLS check (this PostgreSQL server has ssl = off)");
            return;
        }
        result => assert_eq!(result.unwrap(), "tls"),
    }
    let clear = Store::open(
        DbUrl::parse(&with_param(&base, "sslmode=disable")).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(one(&clear, sql).await, "clear");
}
