"""asyncpg through pgvane's split port (see README.md). asyncpg prepares
every statement by name, so this exercises transparent prepared statements."""
import asyncio, os, sys, asyncpg

async def main():
    port, leader = int(os.environ["PGVANE_PORT"]), os.environ["LEADER_IP"]
    c = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", password="postgres", database="postgres")
    # First, before any write (reads follow a session's writes to the leader for 1 s).
    hosts = {await c.fetchval("select host(inet_server_addr())") for _ in range(3)}
    assert leader not in hosts, f"read reached the leader {hosts}"
    await c.execute("create table if not exists drv_asyncpg(id int primary key, v text)")
    await c.execute("delete from drv_asyncpg")
    ins = await c.prepare("insert into drv_asyncpg values ($1, $2)")
    for i in range(3):
        await ins.fetch(i, f"v{i}")
    sel = await c.prepare("select v from drv_asyncpg where id = $1")
    assert await sel.fetchval(1) == "v1"
    async with c.transaction():
        await c.execute("insert into drv_asyncpg values (10, 'tx')")
        assert await c.fetchval("select count(*) from drv_asyncpg") == 4
    try:
        await c.fetchval("select 1/0")
        sys.exit("no error")
    except asyncpg.exceptions.DivisionByZeroError:
        pass
    assert await c.fetchval("select 1") == 1
    await c.close()
    print("OK")

asyncio.run(main())
