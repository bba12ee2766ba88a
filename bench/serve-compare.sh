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
# /proc, over the run) and of the store/nginx ratios, each ratio with the
# lowest and highest of its per-rep values beside it.
#
# With -P the servers and wrk are pinned to CPUs of their own, the same
# way for both sides (taskset): the server, the store or nginx, on the
# CPUs given to -P (e.g. -P 0), wrk on the others, with as many nginx workers
# and store threads running Go code as the server has CPUs (nginx's
# worker_processes and the store's GOMAXPROCS, which the Go runtime takes
# from the CPUs it may run on). Unpinned, the two sides and wrk share the
# CPUs as the scheduler places them, which moves a row's ratio between
# calls on a small shared machine; pinned, each side gets the same CPUs
# against the same load generator. The default comparison is unpinned.
#
# Rows: the mix of all four sizes, uniform and Zipf, at 16 and 64
# connections; thumbnails only and large images only, at 64.
#
# With -c it also compares cold reads with fio, both sides reading exactly
# the same byte ranges, each once, from a cold page cache, at the same
# concurrency. `haybale bench cold-plan` lists every image of the volume
# files (or a random sample, -C) once, in a random order, as the paths for
# wrk and, for each queue depth Q, as Q fio iologs of the same needles
# (job j reads the needles of images j, j+Q, ... of the list, whole,
# psync, buffered, POSIX_FADV_RANDOM as the store's read descriptor).
# Before each side the store is stopped and the volume files are dropped
# from the page cache (posix_fadvise DONTNEED, through dd iflag=nocache; a
# process's own mapping keeps the pages it touched cached through DONTNEED,
# hence the stop); then a fresh store is sent every path once over Q
# connections, one request in flight each, or fio replays the iologs. The
# client (-G) is `haybale bench get-once` (the default), which reads each
# answer's header block and drops the body in the kernel, or wrk with
# bench/wrk-once.lua (the two threads take alternate paths, each thread's
# connections the thread's next path), which reads every body into its
# buffers 8 KiB at a time. The client shares the machine's CPUs with the
# store (fio has no client at all), so its CPU per image is printed next
# to the store's: get-once's own getrusage over the run, wrk's user+system
# time from /proc/PID/stat just before it is interrupted. The store's rate
# is images / (last answer - first request); every image must be
# answered, with no error, and the bytes the client read must be, to the
# byte, one 200 of the image's size per image (one answer's header block,
# read after the run, tells the header bytes).
# Next to each figure: the bytes read from the volume files' block device
# during that side (/proc/diskstats), against the bytes of the distinct
# pages the needles span (a side that read much less from the disk was
# not cold, and the script says so), the disk's reads, and how many were
# in flight on average, and its CPU per image (the store process from
# /proc/PID/stat, fio from its rusage). The side that goes first
# alternates between reps.
#
# With -D the fio side runs twice: buffered, as above, and with direct=1
# (O_DIRECT, as the store reads a needle not in the page cache), each
# iolog range rounded out to 4 KiB as the store rounds its direct reads;
# the table then gives the store against each and against the better.
# fio alone moves a lot from one run to the next on a shared virtual disk
# (the same iologs, cold each time: 0.5-2x at qd 64 with O_DIRECT, see
# bench/RESULTS.md); -F N runs each fio side N times in a row within a
# rep and takes the median run (each run's rate is printed), and with
# more than one rep the table gives the spread of the per-rep ratios
# next to their median.
#
# With -k it also compares cache hits with nginx over the same bytes and
# request lists (BenchmarkHitVsNginx in cache/, run with go test from this
# tree): a cache whose Loader reads the exported files, warmed, then wrk
# against it and nginx in turn. HAYBALE_CACHE_LOOP in the environment
# picks the cache's listener: unset, fasthttp; "both", a cache on each,
# interleaved with nginx; anything else, the event loops.
#
# Needs wrk and nginx (and fio for -c); skips, with a message, what cannot
# run. Nothing needs root except dropping caches, which is per file.
#
# Usage: bench/serve-compare.sh [-w WORKDIR] [-b HAYBALE] [-n PHOTOS]
#                               [-r REPS] [-d DURATION] [-q ROWS] [-c] [-k] [-S]
#                               [-C IMAGES] [-Q DEPTHS] [-D] [-F RUNS] [-G CLIENT]
#                               [-P CPUS]
#   -w  work directory, kept between runs (default /tmp/haybale-serve-bench);
#       a corpus loaded there earlier is reused
#   -b  haybale binary (default: built from this tree into the work directory)
#   -n  photos to load, each in 4 sizes (default 20000)
#   -r  paired reps per row (default 3)
#   -d  wrk duration per run (default 10s)
#   -q  rows to run, a space-separated subset of
#       "mix-uniform:16 mix-uniform:64 mix-zipf:16 mix-zipf:64 t:64 l:64"
#   -c  also run the cold-read comparison with fio
#   -C  cold reads of a random sample of this many images (default: every
#       image once)
#   -Q  queue depths of the cold reads (default "16 64")
#   -D  also run fio with direct=1 on the cold reads (see above)
#   -F  fio runs per side and rep, of which the median counts (default 1)
#   -G  the cold reads' client: haybale (`haybale bench get-once`, the
#       default; a haybale without it is built from this tree) or wrk
#       (bench/wrk-once.lua)
#   -k  also run the cache-hit comparison
#   -S  skip the store rows (with -c or -k)
#   -P  pin the server to these CPUs (a taskset list, e.g. "0" or "0-1")
#       and wrk to the others (see above); for the store rows only, not
#       with -c or -k
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
coldsample=0
colddepths="16 64"
colddirect=0
coldfio=1
coldclient=haybale
cache=0
storerows=1
tableonly=
pin=
while getopts "w:b:n:r:d:q:ckST:C:Q:DF:G:P:h" opt; do
	case $opt in
	w) work=$OPTARG ;;
	b) bin=$OPTARG ;;
	n) photos=$OPTARG ;;
	r) reps=$OPTARG ;;
	d) dur=$OPTARG ;;
	q) rows=$OPTARG ;;
	c) cold=1 ;;
	C) coldsample=$OPTARG ;;
	Q) colddepths=$OPTARG ;;
	D) colddirect=1 ;;
	F) coldfio=$OPTARG ;;
	G) coldclient=$OPTARG ;;
	k) cache=1 ;;
	S) storerows=0 ;;
	T) tableonly=$OPTARG ;;
	P) pin=$OPTARG ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done

for row in $rows; do
	case $row in
	mix-uniform:[0-9]* | mix-zipf:[0-9]* | t:[0-9]* | l:[0-9]*)
		[ "${row##*:}" -gt 0 ] 2>/dev/null && continue ;;
	esac
	echo "serve-compare: -q: no row \"$row\"; a row is a request list (mix-uniform, mix-zipf, t or l), a colon and a connection count, e.g. \"t:64\"" >&2
	exit 2
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
	echo "| rows | conns | store req/s | nginx req/s | store / nginx req/s (min-max) | store CPU µs/req | nginx CPU µs/req | store / nginx CPU per req (min-max) | non-2xx |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for row in $rows; do
		local mix=${row%%:*} conns=${row##*:} bad
		sel() { awk -v m="$mix" -v c="$conns" -v t="$1" -v f="$2" '$2 == m && $3 == c && $4 == t {print $f}' "$results"; }
		ratios() {
			paste <(sel store "$1") <(sel nginx "$1") | awk '{printf "%.3f\n", $1 / $2}'
		}
		# ratio FIELD: the median of the per-rep ratios, then their range.
		ratio() {
			printf "%.2f (%s)" "$(ratios "$1" | median)" "$(ratios "$1" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f-%.2f", lo, hi}')"
		}
		bad=$( (sel store 9; sel nginx 9) | awk '{s += $1} END {print s + 0}')
		printf "| %s | %s | %.0f | %.0f | %s | %.1f | %.1f | %s | %d |\n" "$mix" "$conns" \
			"$(sel store 5 | median)" "$(sel nginx 5 | median)" "$(ratio 5)" \
			"$(sel store 6 | median)" "$(sel nginx 6 | median)" "$(ratio 6)" "$bad"
	done
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

case $coldclient in
haybale | wrk) ;;
*)
	echo "serve-compare: -G $coldclient: want haybale or wrk" >&2
	exit 2
	;;
esac

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

# With -P: the CPUs of wrk (every CPU not the server's), and the prefixes
# that pin the server's and wrk's processes.
server_cpus=() wrk_cpus=() wrk_threads=2
if [ -n "$pin" ]; then
	all=$(taskset -pc $$ | sed 's/.*: //')
	# cpu_list LIST: the CPUs of a taskset list ("0,2-3"), one a line.
	cpu_list() {
		local part
		for part in ${1//,/ }; do seq "${part%-*}" "${part#*-}"; done
	}
	others=$(comm -23 <(cpu_list "$all" | sort) <(cpu_list "$pin" | sort) | sort -n | paste -sd,)
	if [ $cold = 1 ] || [ $cache = 1 ]; then
		echo "serve-compare: -P pins the store rows only; run -c and -k without it" >&2
		exit 2
	fi
	if [ -z "$others" ]; then
		echo "serve-compare: -P $pin leaves no CPU of $all for wrk" >&2
		exit 2
	fi
	server_cpus=(taskset -c "$pin") wrk_cpus=(taskset -c "$others")
	wrk_threads=$(taskset -c "$others" nproc)
	echo "pinned: servers on CPUs $pin ($(taskset -c "$pin" nproc) nginx workers, GOMAXPROCS as many), wrk -t$wrk_threads on CPUs $others"
fi

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
	"${server_cpus[@]}" "$bin" store --insecure --secret-file "$work/secret" --dir "$work/data" \
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
workers=
[ -n "$pin" ] && workers="s#^worker_processes .*#worker_processes $(taskset -c "$pin" nproc);#;"
sed -e "s#/tmp/haybale-bench/static#$work/static#; s#127.0.0.1:8090#127.0.0.1:$nginx_port#; $workers" \
	"$here/nginx-static.conf" >"$work/nginx.conf"
"${server_cpus[@]}" nginx -p "$work/nginx" -c "$work/nginx.conf"
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
	out=$(PATHS=$paths "${wrk_cpus[@]}" wrk -t$wrk_threads -c"$conns" -d"$dur" --latency -s "$here/wrk-paths.lua" "http://127.0.0.1:$port")
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
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) before the runs; wrk -t$wrk_threads -d$dur, $reps reps${pin:+, servers pinned to CPUs $pin, wrk to $others}"
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

# Cold reads: the plan (paths for the client, iologs for fio) from the
# volume files' dumps. Only a haybale with `bench cold-plan` writes it, and
# only one with `bench get-once` is the haybale client: the one given with
# -b if it has the commands, else one built from this tree.
tool=$bin
need=cold-plan
[ "$coldclient" = haybale ] && need=get-once
if ! "$bin" bench --help 2>/dev/null | grep -q "^  $need "; then
	tool=$work/haybale-$need
	echo "building haybale from this tree into $tool ($bin has no bench $need)"
	(cd "$here/.." && go build -o "$tool" ./cmd/haybale)
fi
rm -rf cold
seed=$RANDOM
sample=()
[ "$coldsample" -gt 0 ] && sample=(--sample "$coldsample")
# shellcheck disable=SC2086
"$tool" bench cold-plan --dir cold --manifest manifest.txt "${sample[@]}" \
	--jobs "$(echo $colddepths | tr ' ' ,)" --seed "$seed" data/*.dat >/dev/null
plan() { awk -v k="$1" '$1 == k {print $2}' cold/plan.txt; }
images=$(plan images)
page_bytes=$(plan page_bytes)
data_bytes=$(plan data_bytes)

# disk_read: the block device holding the volume files, from
# /proc/diskstats: "reads-completed bytes-read ms-spent-reading uptime-ms"
# (empty when it has no line there, e.g. on tmpfs).
dev=$(stat -c '%Hd %Ld' -- "$(ls data/*.dat | head -1)")
disk_read() {
	awk -v ma="${dev% *}" -v mi="${dev#* }" -v up="$(cut -d' ' -f1 /proc/uptime)" \
		'$1 == ma && $2 == mi {printf "%d %.0f %d %.0f\n", $4, $6 * 512, $7, up * 1000}' /proc/diskstats
}
[ -n "$(disk_read)" ] || echo "serve-compare: the volume files' device ($dev) has no line in /proc/diskstats; no check that the runs are cold"
drop_cache() {
	local f
	for f in data/*.dat; do dd if="$f" iflag=nocache count=0 status=none; done
}
# disk_delta BEFORE AFTER: sets disk (bytes read between two disk_read
# figures, empty without diskstats) and diskline, which says how they
# compare with the plan's pages (a side that read much less than them
# was not cold), in how many reads, and how many were in flight on
# average (the time the reads spent in the device and its queue over the
# wall time: the queue depth the disk saw).
disk_delta() {
	disk= diskline="disk n/a"
	[ -n "$1" ] && [ -n "$2" ] || return 0
	# shellcheck disable=SC2086
	set -- $1 $2
	disk=$(($6 - $2))
	diskline=$(awk -v n=$(($5 - $1)) -v d="$disk" -v ms=$(($7 - $3)) -v wall="$(($8 - $4))" -v p="$page_bytes" 'BEGIN {
		r = d / p
		printf "disk %.0f MB = %.2fx the pages", d / 1e6, r
		if (r < 0.8) printf " NOT COLD: read from the page cache"
		else if (r > 1.25) printf " (more than the pages: readahead, or other reads on the disk)"
		if (n > 0 && wall > 0) printf ", %d reads of %.0f KB, %.1f in flight", n, d / n / 1e3, ms / wall
	}')
}

# cold_store QD: stop the store, drop, start it, GET every path once over
# QD connections with the -G client; sets rate, disk, cpu (the store's µs
# per image) and client_cpu (the client's), prints a line on stderr. (Not
# in a subshell: it restarts the store, whose pid the script keeps.)
cold_store() {
	local qd=$1 t=2 d0 d1 c0 c1 wpid wt once
	[ "$qd" -lt $t ] && t=$qd
	stop_store
	drop_cache
	start_store
	rm -f cold/done.*
	d0=$(disk_read)
	c0=$(cpu_ticks "$store_pid")
	if [ "$coldclient" = haybale ]; then
		# It prints the once: line and "client: cpu_us_per_request U ...",
		# and fails when a request did; the check below says what failed.
		"$tool" bench get-once --url "http://$store_http" --paths cold/paths.txt --conns "$qd" >cold/client.out 2>&1 || true
		client_cpu=$(awk '$1 == "client:" && $2 == "cpu_us_per_request" {printf "%.0f", $3}' cold/client.out)
	else
		PATHS=cold/paths.txt DONE=$work/cold/done wrk -t$t -c"$qd" -d600s -s "$here/wrk-once.lua" \
			"http://$store_http" -- "$qd" $t >cold/client.out &
		wpid=$!
		while [ "$(find cold -maxdepth 1 -name 'done.*' | wc -l)" -lt $t ] && kill -0 $wpid 2>/dev/null; do sleep 0.1; done
		wt=$(cpu_ticks $wpid 2>/dev/null || echo 0)
		kill -INT $wpid 2>/dev/null || true
		wait $wpid || true
		client_cpu=$(awk -v t="$wt" -v hz="$hz" -v n="$images" 'BEGIN {printf "%.0f", t * 1e6 / hz / n}')
	fi
	d1=$(disk_read)
	c1=$(cpu_ticks "$store_pid")
	cpu=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v n="$images" 'BEGIN {printf "%.0f", t * 1e6 / hz / n}')
	once=$(awk '$1 == "once:"' cold/client.out)
	# What one 200 of the right length per image adds up to, headers
	# included: the store's header block varies only in the Content-Length
	# digits, so one answer's block (read now, after the run) minus its
	# digits, per image, plus the plan's digits and bytes.
	local cl want
	curl -s -D cold/header.txt -o /dev/null "http://$store_http$(head -1 cold/paths.txt)"
	cl=$(awk 'tolower($1) == "content-length:" {print $2}' cold/header.txt | tr -d '\r')
	want=$((data_bytes + images * ($(wc -c <cold/header.txt) - ${#cl}) + $(plan size_digits)))
	# once: requests N answers N status_errors N socket_errors N timeouts N bytes N elapsed_s S rate R
	# shellcheck disable=SC2086
	set -- $once
	if [ "$#" -ne 17 ] || [ "$3" != "$images" ] || [ "$5" != "$images" ] || [ "$7" != 0 ] || [ "$9" != 0 ] ||
		[ "${13}" != "$want" ] || [ "${15}" = unfinished ]; then
		echo "serve-compare: the store's cold run ($coldclient client) did not answer every image once with a 200 of the right length: ${once:-no summary} (want $images requests and answers, no errors, $want bytes)" >&2
		cat cold/client.out >&2
		exit 1
	fi
	rate=${17}
	disk_delta "$d0" "$d1"
	echo "    store ($coldclient client): $rate req/s, $images answers, no error, $((want / 1000000)) MB read as expected (bodies and headers) in ${15} s; $cpu µs CPU per image, the client ${client_cpu:-?}; $diskline" >&2
}

# cold_fio QD [direct]: stop the store, drop, replay the QD iologs
# (buffered, or with "direct" the aligned ones with O_DIRECT); sets rate,
# disk and cpu, prints a line on stderr.
cold_fio() {
	local qd=$1 d0 d1 out job=cold/fio-$1.job bytes kind=fio
	bytes=$(plan needle_bytes)
	if [ "${2:-}" = direct ]; then
		job=cold/fio-$qd-direct.job bytes=$(plan aligned_bytes) kind="fio direct"
	fi
	stop_store
	drop_cache
	d0=$(disk_read)
	if ! out=$(/usr/bin/time -f "rusage %U %S" fio --output-format=terse --terse-version=3 "$job" 2>&1); then
		echo "serve-compare: fio failed: $out" >&2
		exit 1
	fi
	d1=$(disk_read)
	cpu=$(echo "$out" | awk -v n="$images" '$1 == "rusage" {printf "%.0f", ($2 + $3) * 1e6 / n}')
	# terse v3: 5 error, 6 read KiB, 8 read IOPS, 9 read runtime (ms).
	set -- $(echo "$out" | awk -F';' 'NF > 9 {print $5, $6, $8, $9}')
	if [ "$#" -ne 4 ] || [ "$1" != 0 ] || ! awk -v kb="$2" -v b="$bytes" 'BEGIN {exit !(b - kb * 1024 >= 0 && b - kb * 1024 < 1024)}'; then
		echo "serve-compare: $kind's cold run failed or did not read the plan's $bytes bytes: $out" >&2
		exit 1
	fi
	rate=$3
	disk_delta "$d0" "$d1"
	echo "    $kind: $rate reads/s, $images reads, $(($2 * 1024 / 1000000)) MB in $4 ms; $cpu µs CPU per read; $diskline" >&2
}

# fio_rep QD [direct]: cold_fio -F times in a row; sets rate, disk and cpu
# to those of the median run by rate (the lower middle for an even
# count), and prints the runs' spread.
fio_rep() {
	local i runs=() mid kind=${2:+ $2}
	for i in $(seq "$coldfio"); do
		cold_fio "$@"
		runs+=("$rate ${disk:-0} $cpu")
	done
	[ "$coldfio" -gt 1 ] || return 0
	mid=$(printf '%s\n' "${runs[@]}" | sort -g | awk -v n="${#runs[@]}" 'NR == int((n + 1) / 2)')
	read -r rate disk cpu <<<"$mid"
	echo "    fio$kind: median of $coldfio runs $rate reads/s (runs $(printf '%s\n' "${runs[@]}" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}'))" >&2
}

echo
echo "cold reads: $images images ($(awk -v b="$(plan needle_bytes)" 'BEGIN {printf "%.0f", b / 1e6}') MB of needles, $(awk -v b="$page_bytes" 'BEGIN {printf "%.0f", b / 1e6}') MB of pages) in $(ls data/*.dat | wc -l) volume files, each once in a random order (seed $seed), from a cold page cache; $reps reps; client $coldclient"
coldres=$work/cold-results.txt
: >"$coldres"
for rep in $(seq "$reps"); do
	for qd in $colddepths; do
		load=$(cut -d' ' -f1 /proc/loadavg)
		echo "  rep $rep qd $qd (load average $load):" >&2
		fiod_res="0 0 0"
		fio_sides() {
			fio_rep "$qd"
			fio_res="$rate ${disk:-0}" fio_cpu=$cpu
			if [ $colddirect = 1 ]; then
				fio_rep "$qd" direct
				fiod_res="$rate ${disk:-0} $cpu"
			fi
		}
		if [ $((rep % 2)) -eq 1 ]; then
			cold_store "$qd"
			store_res="$rate ${disk:-0}" store_cpu=$cpu store_client_cpu=${client_cpu:-0}
			fio_sides
		else
			fio_sides
			cold_store "$qd"
			store_res="$rate ${disk:-0}" store_cpu=$cpu store_client_cpu=${client_cpu:-0}
		fi
		echo "$rep $qd $store_res $fio_res $load $store_cpu $fio_cpu $fiod_res $store_client_cpu" >>"$coldres"
	done
done
# Each line: rep, qd, store req/s, store disk bytes, fio reads/s, fio disk
# bytes, load average before the rep, store CPU µs per image, fio CPU µs
# per read, fio direct's reads/s, disk bytes and CPU µs per read (0
# without -D), and the client's CPU µs per image.
echo
echo "medians over $reps reps (store / fio: the median of the per-rep ratios, their spread in brackets; disk: bytes read from the disk during the side, over the bytes of the needles' pages; CPU: µs per image, the store process alone, and the $coldclient client's beside it)"
echo
loads() { awk -v q="$1" '$2 == q {print $7}' "$coldres" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print (lo == hi ? lo : lo "-" hi)}'; }
ratio_med() { awk -v q="$1" -v e="$2" '$2 == q {split(e, f, "/"); printf "%.4f\n", $(f[1]) / $(f[2])}' "$coldres" | median; }
# spread: " (lo-hi)" of the numbers on stdin, when there are more than one.
spread() { sort -g | awk '{v[NR] = $1} END {if (NR > 1) printf " (%.2f-%.2f)", v[1], v[NR]}'; }
if [ $colddirect = 0 ]; then
	echo "| qd | store req/s | fio reads/s | store / fio | store disk / pages | fio disk / pages | store CPU | client CPU | fio CPU | load average |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	for qd in $colddepths; do
		col() { awk -v q="$qd" -v f="$1" '$2 == q {print $f}' "$coldres"; }
		printf "| %d | %.0f | %.0f | %.2f%s | %.2f | %.2f | %.0f | %.0f | %.0f | %s |\n" "$qd" "$(col 3 | median)" "$(col 5 | median)" \
			"$(ratio_med "$qd" 3/5)" "$(awk -v q="$qd" '$2 == q {print $3 / $5}' "$coldres" | spread)" \
			"$(awk -v q="$qd" -v p="$page_bytes" '$2 == q {printf "%.4f\n", $4 / p}' "$coldres" | median)" \
			"$(awk -v q="$qd" -v p="$page_bytes" '$2 == q {printf "%.4f\n", $6 / p}' "$coldres" | median)" \
			"$(col 8 | median)" "$(col 13 | median)" "$(col 9 | median)" "$(loads "$qd")"
	done
else
	echo "| qd | store req/s | fio reads/s (buffered) | fio reads/s (direct) | store / fio buffered | store / fio direct | store / better fio | disk / pages: store, fio, fio direct | CPU: store (client), fio, fio direct | load average |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	for qd in $colddepths; do
		col() { awk -v q="$qd" -v f="$1" '$2 == q {print $f}' "$coldres"; }
		pages() { awk -v q="$qd" -v p="$page_bytes" -v f="$1" '$2 == q {printf "%.4f\n", $f / p}' "$coldres" | median; }
		printf "| %d | %.0f | %.0f | %.0f | %.2f | %.2f | **%.2f**%s | %.2f, %.2f, %.2f | %.0f (%.0f), %.0f, %.0f | %s |\n" "$qd" \
			"$(col 3 | median)" "$(col 5 | median)" "$(col 10 | median)" \
			"$(ratio_med "$qd" 3/5)" "$(ratio_med "$qd" 3/10)" \
			"$(awk -v q="$qd" '$2 == q {printf "%.4f\n", $3 / ($5 > $10 ? $5 : $10)}' "$coldres" | median)" \
			"$(awk -v q="$qd" '$2 == q {printf "%.4f\n", $3 / ($5 > $10 ? $5 : $10)}' "$coldres" | spread)" \
			"$(pages 4)" "$(pages 6)" "$(pages 11)" \
			"$(col 8 | median)" "$(col 13 | median)" "$(col 9 | median)" "$(col 12 | median)" "$(loads "$qd")"
	done
fi
awk -v p="$page_bytes" '$4 / p < 0.8 || $6 / p < 0.8 {
	printf "serve-compare: rep %d qd %d was not cold: the %s read %.2fx the pages from the disk\n", $1, $2, ($4 / p < 0.8 ? "store" : "fio"), ($4 / p < 0.8 ? $4 : $6) / p }' "$coldres"
