//! The throwaway PostgreSQL cluster of tests/support/postgres.rs does what the tests that use
//! it rely on: it starts, serves its databases, survives a restart and is gone when dropped.

use std::net::TcpStream;

#[path = "support/postgres.rs"]
mod postgres;
use postgres::Postgres;

#[test]
fn a_cluster_serves_its_databases_across_a_restart_and_is_gone_when_dropped() {
    let pg = Postgres::start();
    let url = pg.url();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/sessiond", pg.port())
    );
    assert_eq!(pg.psql(&url, "select 1"), "1");
    assert_eq!(pg.psql(&url, "select current_database()"), "sessiond");
    assert_eq!(pg.psql(&url, "show fsync"), "on");
    assert_eq!(pg.psql(&url, "show synchronous_commit"), "on");
    assert_eq!(pg.psql(&url, "show max_connections"), "200");

    let other = pg.create_database("other_db");
    assert_eq!(
        other,
        format!("postgres://postgres@127.0.0.1:{}/other_db", pg.port())
    );
    assert_eq!(pg.psql(&other, "select current_database()"), "other_db");
    pg.psql(&other, "create table t (n int); insert into t values (42)");

    pg.restart();
    assert_eq!(pg.psql(&url, "select 1"), "1");
    assert_eq!(pg.psql(&other, "select n from t"), "42");
    // The settings were not only for the first start.
    assert_eq!(pg.psql(&url, "show max_connections"), "200");

    pg.stop();
    assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_err());
    pg.restart();
    assert_eq!(pg.psql(&other, "select n from t"), "42");

    let port = pg.port();
    drop(pg);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the cluster still listens after the drop"
    );
}

#[test]
fn clusters_started_side_by_side_are_separate() {
    let (a, b) = (Postgres::start(), Postgres::start());
    assert_ne!(a.port(), b.port());
    a.psql(&a.url(), "create table only_in_a (n int)");
    assert_eq!(
        a.psql(&a.url(), "select to_regclass('only_in_a') is not null"),
        "t"
    );
    assert_eq!(
        b.psql(&b.url(), "select to_regclass('only_in_a') is not null"),
        "f"
    );
}
