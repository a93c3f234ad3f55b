// node-postgres (pg) through pgvane's split port (see ../README.md).
const { Client } = require('pg');
(async () => {
  const port = Number(process.env.PGVANE_PORT), leader = process.env.LEADER_IP;
  const c = new Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: 'postgres' });
  await c.connect();
  // First, before any write (reads follow a session's writes to the leader for 1 s).
  const h = await c.query('select host(inet_server_addr()) as h');
  if (h.rows[0].h === leader) throw new Error('read reached the leader');
  await c.query('create table if not exists drv_node(id int primary key, v text)');
  await c.query('delete from drv_node');
  for (let i = 0; i < 3; i++) {
    await c.query({ name: 'ins', text: 'insert into drv_node values ($1, $2)', values: [i, 'v' + i] });
  }
  const r = await c.query({ name: 'sel', text: 'select v from drv_node where id = $1', values: [1] });
  if (r.rows[0].v !== 'v1') throw new Error('bad select ' + JSON.stringify(r.rows));
  await c.query('begin');
  await c.query('insert into drv_node values (10, $1)', ['tx']);
  const n = await c.query('select count(*)::int as n from drv_node');
  if (n.rows[0].n !== 4) throw new Error('bad count');
  await c.query('commit');
  let failed = false;
  try { await c.query('select 1/0'); } catch (e) { failed = e.code === '22012'; }
  if (!failed) throw new Error('no division error');
  const one = await c.query('select 1 as one');
  if (one.rows[0].one !== 1) throw new Error('session unusable');
  await c.end();
  console.log('OK');
})().catch((e) => { console.error(e); process.exit(1); });
