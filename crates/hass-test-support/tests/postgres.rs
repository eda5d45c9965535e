//! The throwaway PostgreSQL is a real server a real client can use.

use hass_test_support::TempPostgres;

#[tokio::test]
async fn create_insert_and_read_back() {
    let pg = TempPostgres::start().unwrap();
    let (client, connection) =
        tokio_postgres::connect(&pg.connection_string(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}; server log:\n{}", pg.log()));
    tokio::spawn(connection);

    client
        .batch_execute("CREATE TABLE states (state_id serial PRIMARY KEY, entity text, state text)")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO states (entity, state) VALUES ($1, $2), ($3, $4)",
            &[&"light.kitchen", &"on", &"sensor.door", &"closed"],
        )
        .await
        .unwrap();
    let rows = client
        .query("SELECT entity, state FROM states ORDER BY state_id", &[])
        .await
        .unwrap();
    let read: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        read,
        [
            ("light.kitchen".to_owned(), "on".to_owned()),
            ("sensor.door".to_owned(), "closed".to_owned())
        ]
    );
}

#[tokio::test]
async fn dropping_stops_the_server_and_deletes_its_data() {
    let pg = TempPostgres::start().unwrap();
    let port = pg.port();
    let data_dir = pg.data_dir().to_owned();
    assert!(data_dir.join("PG_VERSION").is_file());
    drop(pg);
    assert!(!data_dir.exists(), "data dir left behind");
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "server still listening on {port}");
}

#[tokio::test]
async fn two_servers_run_side_by_side() {
    let a = TempPostgres::start().unwrap();
    let b = TempPostgres::start().unwrap();
    assert_ne!(a.port(), b.port());
    for pg in [&a, &b] {
        let (client, connection) =
            tokio_postgres::connect(&pg.connection_string(), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
    }
}

#[tokio::test]
async fn restart_brings_the_server_back_on_the_same_port_with_checkpointed_data() {
    let mut pg = TempPostgres::start().unwrap();
    let port = pg.port();
    let (client, connection) =
        tokio_postgres::connect(&pg.connection_string(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    // Run on its own: inside the implicit transaction above it would
    // checkpoint before the commit.
    client.batch_execute("CHECKPOINT").await.unwrap();
    drop(client);
    pg.kill();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );

    pg.restart().unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    assert_eq!(pg.port(), port);
    let (client, connection) =
        tokio_postgres::connect(&pg.connection_string(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = client.query_one("SELECT v FROM kept", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[test]
fn psql_creates_what_a_client_then_uses_and_reports_errors() {
    let pg = TempPostgres::start().unwrap();
    pg.psql("CREATE ROLE homeassistant LOGIN PASSWORD 'pw'")
        .unwrap();
    pg.psql("CREATE DATABASE homeassistant OWNER homeassistant")
        .unwrap();
    let owner = pg
        .psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'homeassistant'")
        .unwrap();
    assert_eq!(owner, "homeassistant");
    let err = pg.psql("SELECT * FROM no_such_table").unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");
}
