# A Patroni 4.1 node with Debian's PostgreSQL 15, as in deploy/lab/lab.sh.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postgresql-15 python3-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/patroni \
 && /opt/patroni/bin/pip install --no-cache-dir 'patroni[etcd3]==4.1.5' 'psycopg[binary]>=3.1'
COPY deploy/docker/patroni-entrypoint.sh /usr/local/bin/patroni-entrypoint.sh
RUN chmod 755 /usr/local/bin/patroni-entrypoint.sh && mkdir -p /data && chown postgres: /data
USER postgres
EXPOSE 5432 8008
ENTRYPOINT ["/usr/local/bin/patroni-entrypoint.sh"]
