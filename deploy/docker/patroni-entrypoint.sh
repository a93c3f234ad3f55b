#!/bin/sh
# Writes the node's Patroni config (the same settings as deploy/lab/lab.sh)
# and execs Patroni. PATRONI_NAME, PATRONI_SCOPE and PATRONI_ETCD3_HOSTS
# come from docker-compose.yml.
set -eu
host=$(hostname)
cat >/data/patroni.yml <<YAML
scope: ${PATRONI_SCOPE}
name: ${PATRONI_NAME}
restapi:
  listen: 0.0.0.0:8008
  connect_address: ${host}:8008
etcd3:
  hosts: ${PATRONI_ETCD3_HOSTS}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters: {wal_level: replica, hot_standby: "on", max_connections: 1200, wal_log_hints: "on"}
  initdb: [{encoding: UTF8}, data-checksums]
postgresql:
  listen: 0.0.0.0:5432
  connect_address: ${host}:5432
  data_dir: /data/pg
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: /data/pgpass
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator}
    rewind: {username: rewinder, password: rewinder}
  # pg_hba.conf as a whole (initdb's own trust lines for 127.0.0.1 would
  # otherwise come first and let every TCP login in without a password).
  pg_hba:
    - local all all trust
    - host replication replicator 0.0.0.0/0 scram-sha-256
    - host all all 0.0.0.0/0 scram-sha-256
  parameters: {unix_socket_directories: /data}
YAML
exec /opt/patroni/bin/patroni /data/patroni.yml
