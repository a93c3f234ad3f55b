"""psycopg 3 through pgvane's split port (see README.md)."""
import os, sys, psycopg
port, leader = int(os.environ["PGVANE_PORT"]), os.environ["LEADER_IP"]
with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="postgres", dbname="postgres", autocommit=True) as c:
    # First, before any write (reads follow a session's writes to the leader for 1 s).
    host = c.execute("select host(inet_server_addr())").fetchone()[0]
    assert host != leader, f"read reached the leader {host}"
    c.execute("create table if not exists drv_psycopg(id int primary key, v text)")
    c.execute("delete from drv_psycopg")
    for i in range(3):
        c.execute("insert into drv_psycopg values (%s, %s)", (i, f"v{i}"), prepare=True)
    rows = c.execute("select v from drv_psycopg where id = %s", (1,), prepare=True).fetchall()
    assert rows == [("v1",)], rows
    with c.transaction():
        c.execute("insert into drv_psycopg values (10, 'tx')")
        assert c.execute("select count(*) from drv_psycopg").fetchone()[0] == 4
    try:
        c.execute("select 1/0")
        sys.exit("no error")
    except psycopg.errors.DivisionByZero:
        pass
    assert c.execute("select 1").fetchone()[0] == 1
print("OK")
