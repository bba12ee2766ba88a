#!/usr/bin/env bash
# serve-compare.sh: a store's image GETs side by side with nginx serving
# the same bytes as static files, and its cold reads side by side with fio.
#
# It loads a corpus into a fresh store (haybale bench store-get, which also
# exports every image as a static file), starts nginx over the export with
# bench/nginx-static.conf (root and port rewritten), and runs wrk with the
# same request lists against both, the two servers interleaved within each
# rep (store first on odd reps, nginx first on even ones). It prints, per
# row, the medians over the reps of requests/s, of server CPU per request
# (user+system time of the store process and of the nginx workers, from
# /proc, over the run) and of the store/nginx ratios.
#
# Rows: the mix of all four sizes, uniform and Zipf, at 16 and 64
# connections; thumbnails only and large images only, at 64.
#
# With -c it also compares cold reads: the store is restarted and the
# volume files are dropped from the page cache (posix_fadvise DONTNEED,
# through dd iflag=nocache) before each run (a process's own mapping keeps
# the pages it touched cached through DONTNEED; the store is stopped before
# fio runs); wrk GETs images for 5 s in a random order that repeats none,
# then fio --rw=randread makes as many reads over the same volume files,
# with the mean sizes of the four image sizes (bssplit) and the same queue
# depth (psync, one job per connection).
#
# With -k it also compares cache hits with nginx over the same bytes and
# request lists (BenchmarkHitVsNginx in cache/, run with go test from this
# tree): a cache whose Loader reads the exported files, warmed, then wrk
# against it and nginx in turn.
#
# Needs wrk and nginx (and fio for -c); skips, with a message, what cannot
# run. Nothing needs root except dropping caches, which is per file.
#
# Usage: bench/serve-compare.sh [-w WORKDIR] [-b HAYBALE] [-n PHOTOS]
#                               [-r REPS] [-d DURATION] [-q ROWS] [-c] [-k] [-S]
#   -w  work directory, kept between runs (default /tmp/haybale-serve-bench);
#       a corpus loaded there earlier is reused
#   -b  haybale binary (default: built from this tree into the work directory)
#   -n  photos to load, each in 4 sizes (default 20000)
#   -r  paired reps per row (default 3)
#   -d  wrk duration per run (default 10s)
#   -q  rows to run, a space-separated subset of
#       "mix-uniform:16 mix-uniform:64 mix-zipf:16 mix-zipf:64 t:64 l:64"
#   -c  also run the cold-read comparison with fio
#   -k  also run the cache-hit comparison
#   -S  skip the store rows (with -c or -k)
#   -T FILE  only print the table of a results file of an earlier run
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=/tmp/haybale-serve-bench
bin=
photos=20000
reps=3
dur=10s
rows="mix-uniform:16 mix-uniform:64 mix-zipf:16 mix-zipf:64 t:64 l:64"
cold=0
cache=0
storerows=1
tableonly=
while getopts "w:b:n:r:d:q:ckST:h" opt; do
	case $opt in
	w) work=$OPTARG ;;
	b) bin=$OPTARG ;;
	n) photos=$OPTARG ;;
	r) reps=$OPTARG ;;
	d) dur=$OPTARG ;;
	q) rows=$OPTARG ;;
	c) cold=1 ;;
	k) cache=1 ;;
	S) storerows=0 ;;
	T) tableonly=$OPTARG ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done

# table RESULTS: the medians of a results file (one line per run: rep,
# request list, connections, target, req/s, CPU µs/request, p50, p99,
# non-2xx answers).
table() {
	local results=$1 rows reps
	rows=$(awk '{print $2 ":" $3}' "$results" | awk '!seen[$0]++' | tr '\n' ' ')
	reps=$(awk '{print $1}' "$results" | sort -u | wc -l)
	echo
	echo "medians over $reps reps (store / nginx ratios are the medians of the per-rep ratios)"
	echo
	echo "| rows | conns | store req/s | nginx req/s | store / nginx req/s | store CPU µs/req | nginx CPU µs/req | store / nginx CPU per req | non-2xx |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for row in $rows; do
		local mix=${row%%:*} conns=${row##*:} bad
		sel() { awk -v m="$mix" -v c="$conns" -v t="$1" -v f="$2" '$2 == m && $3 == c && $4 == t {print $f}' "$results"; }
		ratio() {
			paste <(sel store "$1") <(sel nginx "$1") | awk '{printf "%.3f\n", $1 / $2}' | median
		}
		bad=$( (sel store 9; sel nginx 9) | awk '{s += $1} END {print s + 0}')
		printf "| %s | %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.2f | %d |\n" "$mix" "$conns" \
			"$(sel store 5 | median)" "$(sel nginx 5 | median)" "$(ratio 5)" \
			"$(sel store 6 | median)" "$(sel nginx 6 | median)" "$(ratio 6)" "$bad"
	done
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

if [ -n "$tableonly" ]; then
	table "$tableonly"
	exit 0
fi

for tool in wrk nginx; do
	if ! command -v $tool >/dev/null; then
		echo "serve-compare: $tool is not installed; skipping the comparison (apt-get install wrk nginx-light fio)"
		exit 0
	fi
done

store_http=127.0.0.1:18180
store_grpc=127.0.0.1:18181
nginx_port=18190
mkdir -p "$work/nginx/tmp"
work=$(cd "$work" && pwd)
if [ -z "$bin" ]; then
	echo "building haybale into $work/haybale"
	(cd "$here/.." && go build -o "$work/haybale" ./cmd/haybale)
	bin=$work/haybale
fi

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	# A store still exiting holds its directory's lock: the next run's
	# store could not start.
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[ -f "$work/nginx/nginx.pid" ] && nginx -p "$work/nginx" -c "$work/nginx.conf" -s quit 2>/dev/null || true
}
trap cleanup EXIT

# The store, on the work directory's data (loaded now or earlier).
[ -f "$work/secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret"
start_store() {
	"$bin" store --insecure --secret-file "$work/secret" --dir "$work/data" \
		--http $store_http --grpc $store_grpc --log-level warn >>"$work/store.log" 2>&1 &
	store_pid=$!
	pids+=("$store_pid")
	for _ in $(seq 300); do
		curl -sf "http://$store_http/readyz" >/dev/null 2>&1 && return 0
		kill -0 "$store_pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "serve-compare: the store did not become ready:" >&2
	tail -5 "$work/store.log" >&2
	exit 1
}
stop_store() {
	kill "$store_pid" 2>/dev/null || true
	wait "$store_pid" 2>/dev/null || true
}
: >"$work/store.log"
start_store
if [ ! -f "$work/manifest.txt" ]; then
	echo "loading $photos photos x 4 sizes (and exporting them to $work/static)"
	"$bin" bench store-get --insecure --secret-file "$work/secret" --grpc $store_grpc \
		--url "http://$store_http" --photos "$photos" --manifest "$work/manifest.txt.part" \
		--export "$work/static" --dist uniform --conns 1 --duration 1s >"$work/load.log"
	mv "$work/manifest.txt.part" "$work/manifest.txt"
fi

# nginx over the exported files, with the repository's configuration.
sed -e "s#/tmp/haybale-bench/static#$work/static#; s#127.0.0.1:8090#127.0.0.1:$nginx_port#" \
	"$here/nginx-static.conf" >"$work/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx.conf"
sleep 0.5
nginx_master=$(cat "$work/nginx/nginx.pid")
nginx_workers=$(pgrep -P "$nginx_master" | tr '\n' ' ')

# Request lists: the same files drive both servers.
cd "$work"
[ -f paths-mix-uniform.txt ] || "$bin" bench paths --manifest manifest.txt --dist uniform >paths-mix-uniform.txt
[ -f paths-mix-zipf.txt ] || "$bin" bench paths --manifest manifest.txt --dist zipf >paths-mix-zipf.txt
grep '/t$' paths-mix-uniform.txt >paths-t.txt
grep '/l$' paths-mix-uniform.txt >paths-l.txt

# Warm: both servers read from the page cache.
cat data/*.dat >/dev/null
find static -type f -print0 | xargs -0 cat >/dev/null

# cpu_ticks PID...: user+system clock ticks of the processes.
cpu_ticks() {
	local t=0 p f
	for p in "$@"; do
		read -r -a f <"/proc/$p/stat"
		t=$((t + f[13] + f[14]))
	done
	echo $t
}
hz=$(getconf CLK_TCK)

# run_wrk TARGET PORT PATHS CONNS PIDS...: one wrk run; prints
# "req/s cpu-us-per-request p50 p99 non-2xx".
run_wrk() {
	local port=$2 paths=$3 conns=$4
	shift 4
	local c0 c1 out
	c0=$(cpu_ticks "$@")
	out=$(PATHS=$paths wrk -t2 -c"$conns" -d"$dur" --latency -s "$here/wrk-paths.lua" "http://127.0.0.1:$port")
	c1=$(cpu_ticks "$@")
	echo "$out" | awk -v cpu=$((c1 - c0)) -v hz="$hz" '
		/requests in/ {n = $1}
		/Requests\/sec/ {rps = $2}
		/^ +50%/ {p50 = $2}
		/^ +99%/ {p99 = $2}
		/Non-2xx/ {bad = $NF}
		END {printf "%s %.1f %s %s %d\n", rps, cpu * 1e6 / hz / n, p50, p99, bad}'
}

if [ $storerows = 1 ]; then
echo
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) before the runs; wrk -t2 -d$dur, $reps reps"
results=$work/results.txt
: >"$results"
for rep in $(seq "$reps"); do
	for row in $rows; do
		mix=${row%%:*} conns=${row##*:}
		order="store nginx"
		[ $((rep % 2)) -eq 0 ] && order="nginx store"
		for target in $order; do
			if [ $target = store ]; then
				r=$(run_wrk store "${store_http##*:}" "paths-$mix.txt" "$conns" "$store_pid")
			else
				# shellcheck disable=SC2086
				r=$(run_wrk nginx $nginx_port "paths-$mix.txt" "$conns" $nginx_workers)
			fi
			echo "$rep $mix $conns $target $r" | tee -a "$results"
		done
	done
done

table "$results"
fi

if [ $cache = 1 ]; then
	echo
	echo "cache hits: load average $(cut -d' ' -f1-3 /proc/loadavg) before the runs"
	(cd "$here/.." && HAYBALE_BENCH_DIR=$work HAYBALE_NGINX_URL=http://127.0.0.1:$nginx_port \
		HAYBALE_NGINX_PIDS="$nginx_workers" HAYBALE_WRK_DURATION=$dur HAYBALE_BENCH_REPS=$reps \
		go test -run '^$' -bench HitVsNginx -benchtime 1x ./cache/ | grep -v '^\(goos\|goarch\|pkg\|cpu\|PASS\|ok\|BenchmarkHitVsNginx\)')
fi

[ $cold = 1 ] || exit 0
if ! command -v fio >/dev/null; then
	echo "serve-compare: fio is not installed; skipping the cold-read comparison"
	exit 0
fi

# Cold reads. Every image once, in random order, so no run reads an image
# twice; the page cache is dropped for the volume files before each run.
# fio then makes as many reads as the store answered (split over its
# jobs), with the mean sizes of the four image sizes, so both read the
# same amount of data from a cold cache; a time-based fio run would soon
# read the whole corpus again from the cache it warmed.
drop_cache() { for f in data/*.dat; do dd if="$f" iflag=nocache count=0 status=none; done; }
shuf paths-mix-uniform.txt | awk '!seen[$0]++' >paths-cold.txt
sizes=$(awk '{s[$2] += $1; n[$2]++} END {for (k in s) printf "%s:%d\n", k, s[k] / n[k]}' \
	<(find static -type f -name '[tslm]' -printf '%s %f\n'))
bssplit=$(echo "$sizes" | awk -F: '{printf "%s%d/25", (NR > 1 ? ":" : ""), $2}')
files=$(ls data/*.dat | paste -sd:)
echo
echo "cold reads: the volume files dropped from the page cache before each run; mean sizes $(echo $sizes)"
echo "| qd | store req/s | fio reads/s | store / fio |"
echo "|---|---|---|---|"
for qd in 16 64; do
	s_all="" f_all=""
	for rep in $(seq "$reps"); do
		# A fresh store each time: pages a process has mapped and touched
		# stay cached through posix_fadvise(DONTNEED), so a store that
		# served warm runs from its mapping would not start cold, and
		# neither would fio after it.
		stop_store
		drop_cache
		start_store
		out=$(PATHS=paths-cold.txt wrk -t2 -c$qd -d5s -s "$here/wrk-paths.lua" "http://$store_http")
		s=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
		n=$(echo "$out" | awk '/requests in/ {print $1}')
		stop_store
		drop_cache
		f=$(fio --name=cold --filename="$files" --rw=randread --bssplit="$bssplit" --ioengine=psync \
			--numjobs=$qd --thread --group_reporting --randrepeat=0 --number_ios=$((n / qd + 1)) \
			--invalidate=1 --output-format=terse --terse-version=3 | awk -F';' '{print $8}')
		s_all="$s_all $s" f_all="$f_all $f"
		echo "  rep $rep qd $qd: store $s req/s ($n reads), fio $f reads/s" >&2
	done
	sm=$(echo $s_all | tr ' ' '\n' | median)
	fm=$(echo $f_all | tr ' ' '\n' | median)
	printf "| %d | %.0f | %.0f | %.2f |\n" $qd "$sm" "$fm" "$(awk -v s="$sm" -v f="$fm" 'BEGIN {print s / f}')"
done
