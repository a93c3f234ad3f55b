#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) on
# the corpora kept in fuzz/corpus/ (seeded from the repo's fixtures), then
# prints what each run found. Not part of .ci/run: it needs nightly and
# minutes of CPU. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames startup scram classifier patroni config)
seed() { # target: the corpus starts from real inputs
  local d=corpus/$1; mkdir -p "$d"
  case $1 in
    patroni) for f in ../tests/fixtures/patroni/*.json; do [ -f "$f" ] && cp -n "$f" "$d/"; done ;;
    config) cp -n ../config.example.yaml "$d/example.yaml" ;;
    classifier)
      printf 'select 1' >"$d/select"; printf 'insert into t values (1) returning *' >"$d/insert"
      printf "with x as (update t set a = 1 returning a) select * from x" >"$d/cte"
      printf "select set_config('a', 'b', false)" >"$d/set_config"
      printf 'begin; select 1; commit' >"$d/batch" ;;
    frames) printf 'Q\0\0\0\rselect 1\0S\0\0\0\4' >"$d/query_sync" ;;
    startup)
      printf '\0\0\0\x08\x04\xd2\x16\x2f' >"$d/sslrequest"
      printf '\0\0\0\x21\0\x03\0\0user\0app\0database\0db\0\0' >"$d/startup" ;;
    scram) printf 'n,,n=,r=abcdef\xffc=biws,r=abcdefN,p=AAAA' >"$d/exchange" ;;
  esac
}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed for nightly: installing it (cargo install cargo-fuzz)"
  cargo +nightly install --locked cargo-fuzz
fi
for t in "${targets[@]}"; do
  seed "$t"
  start=$SECONDS
  log=artifacts/$t.log; mkdir -p artifacts
  if cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  elif grep -q 'SUMMARY: libFuzzer\|panicked at\|deadly signal' "$log"; then
    result="FOUND A CRASH (see $log and artifacts/$t/)"
  else
    result="FAILED TO RUN (see $log)"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  printf '%-10s %4ss %10s execs  corpus %5s files  %s\n' "$t" "$((SECONDS - start))" "$runs" "$(ls "corpus/$t" | wc -l)" "$result"
done
