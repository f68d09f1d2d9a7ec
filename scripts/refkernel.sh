#!/usr/bin/env bash
# The real kernel as the oracle: build Linux 7.2 (Debian's linux-source-7.2) with iommufd, its test
# hooks (IOMMUFD_TEST), VFIO (cdev + the iommufd-provided /dev/vfio/vfio), FUSE and CUSE from the
# small config scripts/refkernel.config, boot it under QEMU/TCG with a busybox initramfs, and run the
# replay corpus (tests/replay/*.jsonl; in the test variant also tests/replay/selftest and tests/replay/objfd, the
# uiommufd side then under `uiommufd launch`) in that guest twice: against the kernel's own /dev/iommu and
# /dev/vfio/vfio, then against uiommufd serving the same corpus over FUSE (/run/u/iommu) in the same
# guest. uiommufd is only the replay client in the first run. In the test variant the same guest
# then runs the kernel's own iommufd selftest (the binary scripts/kselftest.sh built) against the
# kernel's /dev/iommu, and its result is compared instance by instance with uiommufd's result from
# scripts/kselftest.sh's run (its output.tap). Also in the test variant, the daemon of the uiommufd
# run records its sessions (serve --record), and the recordings are replayed on the kernel's nodes
# and on a fresh daemon: their failures and the original scripts' kernel traces against the
# recordings' (ioctl by ioctl) must be the lines of tests/refkernel-recorded-expected.txt, their
# kernel-vs-uiommufd traces those of tests/refkernel-trace-expected.txt (mode recorded).
#
# Every step that fails on the real kernel is a divergence between the corpus (our expectations)
# and the kernel. The gate, per variant: the FAIL lines ("file:line: step N: IOCTL: expected X, got
# Y") of both runs, prefixed "kernel: " and "uiommufd: ", must be exactly the lines of the variant's
# expected list; new failures and ones that went away both fail. The selftest's gate: the instances
# whose result (pass/fail/skip) differs between the kernel and uiommufd, as lines "INSTANCE
# kernel=X uiommufd=Y", must be exactly those of tests/refkernel-kselftest-expected.txt.
# Both replays run with --trace (src/replay/trace.rs: per ioctl step the result, the struct after
# the call and the caller buffers it points to); the traces are compared kernel vs uiommufd step by
# step, for the corpus and the probe, and the differing items ("VARIANT MODE SCRIPT STEP IOCTL ITEM
# kernel=X uiommufd=Y") must be exactly those of tests/refkernel-trace-expected.txt.
#
#   scripts/refkernel.sh                    build (or take from the cache), boot, replay, compare
#   scripts/refkernel.sh --build-only       stop after the kernel images are in the cache
#   scripts/refkernel.sh --update-expected  run, then rewrite the expected list(s)
#   scripts/refkernel.sh --log FILE         no build/boot: judge an existing console log (with
#                                           --variant test|prod)
#   scripts/refkernel.sh --probe            differential probe instead of the corpus: generated
#                                           one-step scripts (every iommufd ioctl number 0x80-0xa1
#                                           and VFIO container number 0x64-0x77, each with a set of
#                                           argument shapes), run on both sides; each probe whose
#                                           outcome differs between the kernel and uiommufd is
#                                           printed and gated against tests/refkernel-probe-expected.txt
#   scripts/refkernel.sh --no-kselftest     leave the kernel's selftest out of the test variant
#   scripts/refkernel.sh --self-test        check the judging on built-in sample logs (no QEMU)
#   --variant test|prod|both                which kernel(s) (default both): "test" has
#                                           CONFIG_IOMMUFD_TEST (uiommufd runs with --selftest),
#                                           "prod" is the same config without it, as production
#                                           kernels are (uiommufd runs without --selftest)
#
# Each variant has its own expected list: tests/refkernel-expected.txt (test) and
# tests/refkernel-expected-prod.txt (prod).
#
# The image is cached outside the checkout under $REFKERNEL_CACHE (default
# ${XDG_CACHE_HOME:-/var/cache}/uiommufd/refkernel) in <kernel version>-<hash of the variant's
# fragment>/, with the .config next to it; a missing image is rebuilt (make -j$REFKERNEL_JOBS,
# default 2; 8-9 min on 2 cores for the first, under a minute for the other variant). The object
# tree of the last build stays in $REFKERNEL_CACHE/build (remove it freely), so the second variant
# and a changed fragment build incrementally.
#
# Env: LINUX_SRC (an unpacked tree; default: scripts/fetch-linux-source.sh into target/linux-src),
# LINUX_SOURCE_VERSION (Debian version to fetch), UIOMMUFD (binary; default cargo build --release),
# GUEST_PKG_DIR (busybox-static, via scripts/lib-guest.sh), QEMU, BOOT_TIMEOUT (default 600 s),
# REPLAY (scripts or dirs, default tests/replay, plus tests/replay/selftest and tests/replay/objfd in the test variant), KSELFTEST_BIN (the selftest binary, default
# $CARGO_TARGET_DIR/kselftest/iommufd, built by scripts/kselftest.sh --build-only when missing),
# KSELFTEST_TAP (uiommufd's result, default $CARGO_TARGET_DIR/kselftest/output.tap: run
# scripts/kselftest.sh first). Under CI=true a missing selftest binary or TAP fails; elsewhere a
# missing TAP only skips the comparison.
# Exit: 0 every variant's failures match its list; 1 a difference or a guest that did not finish;
# 2 could not run.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT0=${CARGO_TARGET_DIR:-$ROOT/target}/refkernel
KSELFTEST_BIN=${KSELFTEST_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/kselftest/iommufd}
KSELFTEST_TAP=${KSELFTEST_TAP:-${CARGO_TARGET_DIR:-$ROOT/target}/kselftest/output.tap}
KSELFTEST_EXPECTED=$ROOT/tests/refkernel-kselftest-expected.txt
QEMU=${QEMU:-qemu-system-x86_64}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-600}
FRAGMENT=$ROOT/scripts/refkernel.config
default_version=7.2.12-1~bpo13+1
die() { echo "refkernel: $*" >&2; exit 2; }
# shellcheck source=scripts/lib-kselftest.sh
. "$ROOT/scripts/lib-kselftest.sh"

mode=run
update=0
log_in=""
variants="test prod"
kselftest=1
while [ $# -gt 0 ]; do
  case $1 in
    --build-only) mode=build ;;
    --update-expected) update=1 ;;
    --log) log_in=$2; mode=log; shift ;;
    --self-test) mode=selftest ;;
    --probe) mode=probe ;;
    --no-kselftest) kselftest=0 ;;
    --variant)
      case ${2:-} in test|prod) variants=$2 ;; both) variants="test prod" ;; *) die "--variant test|prod|both" ;; esac
      shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

# set_variant V: OUT, EXPECTED, SERVE_FLAGS and the effective fragment $OUT/fragment for V.
set_variant() {
  VARIANT=$1
  OUT=$OUT0/$VARIANT
  mkdir -p "$OUT"
  case $VARIANT in
    test)
      EXPECTED=$ROOT/tests/refkernel-expected.txt
      SERVE_FLAGS=--selftest
      cp "$FRAGMENT" "$OUT/fragment" ;;
    prod)
      EXPECTED=$ROOT/tests/refkernel-expected-prod.txt
      SERVE_FLAGS=
      { grep -vx 'enable IOMMUFD_TEST' "$FRAGMENT"; echo "disable IOMMUFD_TEST"; } > "$OUT/fragment" ;;
  esac
}

# gather_corpus DIR: the scripts this variant replays, copied into DIR: REPLAY, or tests/replay plus,
# in the test variant, the selftest corpus (it needs IOMMU_TEST_CMD: that kernel, `serve --selftest`),
# the object-fd scripts (tests/replay/objfd: fault and vEVENT queues on the mock device; the
# uiommufd side runs under `uiommufd launch`, see run_guest) and the recorded QEMU e2e sessions of tests/replay/qemu transformed for the selftest's mock device
# (`uiommufd replay --to-mock`: the kernel has no dmacopy; docs/refkernel.md).
gather_corpus() {
  local dir=$1 sources=${REPLAY:-$ROOT/tests/replay} s
  if [ -z "${REPLAY:-}" ] && [ "$VARIANT" = test ]; then sources="$sources $ROOT/tests/replay/selftest $ROOT/tests/replay/objfd"; fi
  mkdir -p "$dir"
  for s in $sources; do
    if [ -d "$s" ]; then cp "$s"/*.jsonl "$dir/"; else cp "$s" "$dir/"; fi
  done
  if [ -z "${REPLAY:-}" ] && [ "$VARIANT" = test ]; then
    # (--log judges before the guest helpers are loaded)
    # shellcheck source=scripts/lib-guest.sh
    command -v guest_build_uiommufd >/dev/null || . "$ROOT/scripts/lib-guest.sh"
    guest_build_uiommufd
    "$UIOMMUFD" replay --to-mock "$dir" "$ROOT"/tests/replay/qemu/*.jsonl \
      || die "cannot transform tests/replay/qemu for the mock device"
  fi
}

expected_header() {
  cat <<EOF
# Replay steps (tests/replay) that fail in scripts/refkernel.sh's $VARIANT variant: "kernel: " lines
# are FAIL lines of \`uiommufd replay\` against the real Linux 7.2 /dev/iommu (each one a divergence
# between the corpus and the kernel), "uiommufd: " lines those of the same corpus against uiommufd in
# the same guest; paths without the directory. A script stops at its first failing step, so one line
# a script and side at most. The script fails when either set differs (a new failure, or one that
# went away: then delete its line, or run scripts/refkernel.sh --variant $VARIANT --update-expected).
# docs/refkernel.md says why each one diverges and who is right.
EOF
}

# read_expected FILE OUT: FILE's lines without comments, blank lines and trailing blanks, sorted, into
# OUT (empty when FILE is missing).
read_expected() {
  if [ -f "$1" ]; then
    { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$1" || true; } | sed 's/[[:space:]]*$//' | sort -u > "$2"
  else
    : > "$2"
  fi
}

# report_changes WHAT FILE NEW GONE: prints the new lines and the listed ones that went away (both
# newline-separated, possibly empty); returns 1 when there is either.
report_changes() {
  local what=$1 file=${2#"$ROOT"/} new=$3 gone=$4 rc=0
  if [ -n "$new" ]; then
    echo "[$VARIANT] NEW $what, not in $file:"; sed 's/^/  /' <<<"$new"; rc=1
  fi
  if [ -n "$gone" ]; then
    echo "[$VARIANT] GONE: listed $what that no longer occur (delete them from $file):"; sed 's/^/  /' <<<"$gone"; rc=1
  fi
  return $rc
}

# judge LOG: the FAIL lines of both runs (prefixed "kernel: " / "uiommufd: ") against the expected list.
judge() {
  local log=$1 rc=0 got exp ksum usum
  ksum=$(sed -n 's/^KREPLAY: \([0-9]* passed, [0-9]* failed\)$/\1/p' "$log" | tail -n1)
  usum=$(sed -n 's/^UREPLAY: \([0-9]* passed, [0-9]* failed\)$/\1/p' "$log" | tail -n1)
  echo "[$VARIANT] kernel   /dev/iommu   : ${ksum:-no summary}"
  echo "[$VARIANT] uiommufd /run/u/iommu : ${usum:-no summary}"
  [ -n "$ksum" ] && [ -n "$usum" ] || { echo "[$VARIANT] FAIL: a replay summary is missing from $log"; tail -n 40 "$log"; return 1; }
  got=$OUT/failures.txt
  { sed -n 's/^KREPLAY: FAIL \(.*\)$/kernel: \1/p; s/^UREPLAY: FAIL \(.*\)$/uiommufd: \1/p' "$log" || true; } \
    | sed 's|^\([a-z]*: \)[^:]*/|\1|' | sort -u > "$got"
  exp=$OUT/expected.txt
  read_expected "$EXPECTED" "$exp"
  echo "[$VARIANT] failing steps (kernel: the real kernel vs the corpus; uiommufd: the daemon in the same guest):"
  if [ -s "$got" ]; then sed 's/^/  /' "$got"; else echo "  none"; fi
  if [ "$update" = 1 ]; then
    { expected_header; echo; cat "$got"; } > "$EXPECTED"
    echo "rewrote ${EXPECTED#"$ROOT"/}: $(wc -l < "$got") line(s)"
    cp "$got" "$exp"
  fi
  report_changes "failure(s)" "$EXPECTED" "$(comm -13 "$exp" "$got")" "$(comm -23 "$exp" "$got")" || rc=1
  [ $rc = 0 ] && echo "[$VARIANT] PASS: the $(wc -l < "$exp") listed failure(s), no others"
  return $rc
}

# ---- what each call left behind: the traces of both runs, step by step ----
TRACE_EXPECTED=$ROOT/tests/refkernel-trace-expected.txt

trace_expected_header() {
  cat <<'EOF'
# Differences between what the real Linux 7.2 and uiommufd left behind after the same ioctl step
# (scripts/refkernel.sh; `uiommufd replay --trace`, format in src/replay/trace.rs): the result, each
# field of the struct after the call, the bytes no field covers (@OFFSET) and the caller buffers
# the struct points to (*FIELD). One line per differing item:
#   VARIANT MODE SCRIPT STEP IOCTL ITEM kernel=X uiommufd=Y  # why
# MODE is corpus (tests/replay) or probe (--probe); "absent": the step or item is only in one
# trace. scripts/refkernel.sh fails when the set differs (new ones, or listed ones that went away);
# --update-expected rewrites the lines of the variant and mode it ran, keeping the reasons.
EOF
}

# trace_lines PREFIX LOG: the TRACE lines of one run, "SCRIPT STEP IOCTL TOKEN..." (script without
# its directory; a recording under the name of what it recorded, from $OUT/recording-names.txt).
trace_lines() {
  { sed -n "s/^$1: TRACE //p" "$2" || true; } | sed 's|^[^ ]*/||' | rename_recordings
}

# rename_recordings: "uiommufd-PID-ctxN.jsonl" at the start of each line becomes the label of what it
# recorded (recorded_names); other lines pass unchanged.
rename_recordings() {
  awk -v map="$OUT/recording-names.txt" '
    BEGIN { while ((getline l < map) > 0) { split(l, f, " "); name[f[1]] = f[2] } }
    { n = $1; sub(/:.*$/, "", n); if (n in name) $0 = name[n] substr($0, length(n) + 1); print }'
}

# trace_diff KERNEL UIOMMUFD: one line per differing item, "SCRIPT STEP IOCTL ITEM kernel=X
# uiommufd=Y"; on stderr the number of steps traced on both sides.
trace_diff() {
  awk '
    FNR == 1 { side++ }
    {
      key = $1 " " $2; label[key] = $3
      if (!(key in seen)) { seen[key] = 1; order[++n] = key }
      has[side, key] = 1
      for (i = 4; i <= NF; i++) {
        eq = index($i, "="); item = substr($i, 1, eq - 1)
        val[side, key, item] = substr($i, eq + 1)
        if (!((key, item) in iseen)) { iseen[key, item] = 1; items[key] = items[key] " " item }
      }
    }
    END {
      both = 0
      for (j = 1; j <= n; j++) {
        key = order[j]
        if (!has[1, key] || !has[2, key]) {
          printf "%s %s step kernel=%s uiommufd=%s\n", key, label[key], has[1, key] ? "ran" : "absent", has[2, key] ? "ran" : "absent"
          continue
        }
        both++
        m = split(substr(items[key], 2), it, " ")
        for (i = 1; i <= m; i++) {
          k = ((1, key, it[i]) in val) ? val[1, key, it[i]] : "absent"
          u = ((2, key, it[i]) in val) ? val[2, key, it[i]] : "absent"
          if (k != u) printf "%s %s %s kernel=%s uiommufd=%s\n", key, label[key], it[i], k, u
        }
      }
      print both > "/dev/stderr"
    }' "$1" "$2"
}

# trace_judge LOG MODE [KPREFIX UPREFIX]: compares the kernel's and uiommufd's traces (log lines
# KPREFIX/UPREFIX, default KREPLAY/UREPLAY) step by step; the differences, as "VARIANT MODE ...",
# must be the lines of $TRACE_EXPECTED for this variant and mode.
trace_judge() {
  local log=$1 tmode=$2 kp=${3:-KREPLAY} up=${4:-UREPLAY}
  local k=$OUT/trace-$tmode-kernel.txt u=$OUT/trace-$tmode-uiommufd.txt got=$OUT/trace-$tmode-differences.txt
  local exp=$OUT/trace-$tmode-expected.txt steps rc=0
  trace_lines "$kp" "$log" > "$k"; trace_lines "$up" "$log" > "$u"
  if [ ! -s "$k" ] || [ ! -s "$u" ]; then
    echo "[$VARIANT] FAIL: no TRACE lines from $([ -s "$k" ] && echo uiommufd || echo the kernel) in $log"
    return 1
  fi
  steps=$(trace_diff "$k" "$u" 2>&1 >/dev/null)
  trace_diff "$k" "$u" 2>/dev/null | sed "s/^/$VARIANT $tmode /" | sort > "$got"
  echo "[$VARIANT] traces ($tmode): $steps ioctl steps on both sides ($(wc -l < "$k") kernel, $(wc -l < "$u") uiommufd); $(wc -l < "$got") item(s) differ:"
  sed 's/^/  /' "$got" | cut -c1-400
  { grep -h "^$VARIANT $tmode " "$TRACE_EXPECTED" 2>/dev/null || true; } \
    | sed -E 's/[[:space:]]+#[[:space:]].*$//; s/[[:space:]]*$//' | sort -u > "$exp"
  if [ "$update" = 1 ]; then
    # Keep the other variants' and modes' lines, and the reason of every line that stays.
    {
      trace_expected_header; echo
      { { grep -v -e '^#' -e '^$' "$TRACE_EXPECTED" 2>/dev/null || true; } | { grep -v "^$VARIANT $tmode " || true; }
        awk 'FILENAME == ARGV[1] { l = $0; sub(/[[:space:]]+#[[:space:]].*$/, "", l); if (l != $0) why[l] = substr($0, length(l) + 1); next }
             { print $0 (($0 in why) ? why[$0] : "  # TODO: why") }' <(grep -v '^#' "$TRACE_EXPECTED" 2>/dev/null || true) "$got"
      } | sort
    } > "$TRACE_EXPECTED.new"
    mv "$TRACE_EXPECTED.new" "$TRACE_EXPECTED"
    echo "rewrote ${TRACE_EXPECTED#"$ROOT"/} ($VARIANT $tmode)"; cp "$got" "$exp"
  fi
  report_changes "trace difference(s)" "$TRACE_EXPECTED" "$(comm -13 "$exp" "$got")" "$(comm -23 "$exp" "$got")" || rc=1
  [ $rc = 0 ] && echo "[$VARIANT] PASS: traces ($tmode): the $(wc -l < "$exp") listed difference(s), no others"
  return $rc
}

# ---- recorded sessions: the uiommufd run recorded (serve --record), replayed on the kernel ----
RECORDED_EXPECTED=$ROOT/tests/refkernel-recorded-expected.txt

recorded_expected_header() {
  cat <<'EOS'
# Recorded sessions in scripts/refkernel.sh (docs/refkernel.md, "Recorded sessions"): the corpus run
# against uiommufd in the guest is recorded (`serve --record`), and each recording is replayed on the
# kernel's /dev/iommu and on a fresh daemon. A recording is named after what it recorded: SCRIPT, or
# SCRIPT#FD for a script's other opens. Lines, per variant:
#   VARIANT fail kernel|uiommufd: RECORDING:LINE: step N: ...   a recording's step that failed
#   VARIANT original RECORDING K IOCTL ITEM original=X recorded=Y
#       the K-th ioctl of that open differs between the original script and its recording, both on
#       the kernel (addresses and memfds compared as "&ptr" / "#fd": buffers differ by name)
# The recordings' own kernel-vs-uiommufd traces are gated in tests/refkernel-trace-expected.txt
# (mode "recorded"). Each line ends with its reason after "  # ". The script fails when the set
# differs: new lines, or listed ones that went away (--update-expected rewrites the variant's lines).
EOS
}

# recorded_names: which recording holds which open. The daemon numbers contexts in the order they
# open and the replay client runs the scripts one after the other in sorted order, so the N-th
# recording (by context number) is the N-th open of the corpus. Writes $OUT/recording-names.txt
# ("uiommufd-PID-ctxN.jsonl LABEL") and $OUT/original-steps.txt ("SCRIPT STEP LABEL" per ioctl
# step); fails when the counts differ (a script stopped before one of its opens).
recorded_names() {
  local log=$1 scripts=$2 recs
  awk '
    FNR == 1 { script = FILENAME; sub(/.*\//, "", script); n = 0; delete cur }
    { t = $0; sub(/^[ \t]+/, "", t); sub(/[ \t]+$/, "", t)
      if (t == "" || t ~ /^#/ || t ~ /^\/\//) next
      n++
      if (t ~ /"open"[ \t]*:/) {
        fd = "fd"
        if (match(t, /"as"[ \t]*:[ \t]*"[^"]*"/)) { fd = substr(t, RSTART, RLENGTH); sub(/^"as"[ \t]*:[ \t]*"/, "", fd); sub(/"$/, "", fd) }
        cur[fd] = (fd == "fd") ? script : script "#" fd
        print "OPEN " cur[fd]
      } else if (t ~ /"ioctl"[ \t]*:/) {
        fd = "fd"
        if (match(t, /"fd"[ \t]*:[ \t]*"[^"]*"/)) { fd = substr(t, RSTART, RLENGTH); sub(/^"fd"[ \t]*:[ \t]*"/, "", fd); sub(/"$/, "", fd) }
        # An "fd" naming no open is an argument (a memfd, "#buffer"): the step uses the default fd.
        if (!(fd in cur)) fd = "fd"
        print "STEP " script " " n " " cur[fd]
      }
    }' "$scripts"/*.jsonl > "$OUT/original-opens.txt"
  sed -n 's/^STEP //p' "$OUT/original-opens.txt" > "$OUT/original-steps.txt"
  recs=$({ sed -n 's/^RECORDING: \(uiommufd-[0-9]*-ctx[0-9]*\.jsonl\): .*$/\1/p' "$log" || true; } | uniq \
    | sed 's/^\(.*ctx\)\([0-9]*\)\(\.jsonl\)$/\2 \1\2\3/' | sort -n | cut -d' ' -f2)
  paste -d' ' <(printf '%s\n' "$recs") <(sed -n 's/^OPEN //p' "$OUT/original-opens.txt") > "$OUT/recording-names.txt"
  local nr no
  nr=$(grep -c . <<<"$recs" || true); no=$(grep -c '^OPEN ' "$OUT/original-opens.txt" || true)
  echo "[$VARIANT] recordings: $nr, opens in the corpus: $no"
  if [ "$nr" != "$no" ]; then
    echo "[$VARIANT] FAIL: $nr recordings for $no opens (a session went unrecorded, or a script stopped early)"
    return 1
  fi
  # Kept for inspection under the names of what they recorded.
  rm -rf "$OUT/recorded"; mkdir -p "$OUT/recorded"
  { sed -n 's/^RECORDING: //p' "$log" || true; } | rename_recordings \
    | awk -v d="$OUT/recorded" '{ i = index($0, ": "); f = substr($0, 1, i - 1); print substr($0, i + 2) > (d "/" f) }'
}

# ptr_normalized: each trace line keyed "LABEL K IOCTL" by its ioctl's index within the open, with
# what legitimately differs between a script and its recording reduced or left out:
# * addresses ("&buffer+0x…": the buffers have other names and offsets) and memfds ("#buffer")
#   become "&ptr" and "#fd"; so does a literal user address (0x7f…: a pointer the call never
#   dereferenced is recorded as its value, outside any buffer);
# * "arg" when it is a pointer or 0 (a struct the script passes by "&buffer" is recorded as raw
#   bytes; an integer op the script gives no arg is recorded with "arg": 0);
# * "*user_va" and "*vaddr", the contents of memory being mapped: the recorder keeps what the call
#   reads of the caller's memory, which for a map is the range, not the bytes in it.
ptr_normalized() {
  awk '{ c[$1]++; $2 = c[$1]; line = $1 " " $2 " " $3
    for (i = 4; i <= NF; i++) {
      if ($i ~ /^arg=(&|0x0$)/ || $i ~ /^\*(user_va|vaddr)=/) continue
      t = $i; sub(/=&[^ ]*/, "=\\&ptr", t); sub(/=#[^ ]*/, "=#fd", t); sub(/=0x7f[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]$/, "=\\&ptr", t)
      line = line " " t
    }
    print line }'
}

# recorded_judge LOG: the recordings replayed on the kernel and on a fresh daemon (failures, and the
# original scripts' kernel traces against the recordings' kernel traces, ioctl by ioctl) against
# $RECORDED_EXPECTED; the recordings' kernel-vs-uiommufd traces through trace_judge (mode recorded).
recorded_judge() {
  local log=$1 scripts=${2:-$OUT/root/replay} rc=0 ksum usum got=$OUT/recorded-differences.txt
  local exp=$OUT/recorded-expected.txt orig=$OUT/recorded-original.txt rec=$OUT/recorded-recording.txt steps
  recorded_names "$log" "$scripts" || return 1
  ksum=$(sed -n 's/^RKREPLAY: \([0-9]* passed, [0-9]* failed\)$/\1/p' "$log" | tail -n1)
  usum=$(sed -n 's/^RUREPLAY: \([0-9]* passed, [0-9]* failed\)$/\1/p' "$log" | tail -n1)
  echo "[$VARIANT] recordings on the kernel /dev/iommu : ${ksum:-no summary}"
  echo "[$VARIANT] recordings on a fresh uiommufd     : ${usum:-no summary}"
  [ -n "$ksum" ] && [ -n "$usum" ] || { echo "[$VARIANT] FAIL: a recorded replay's summary is missing from $log"; return 1; }
  # The original's kernel trace, each ioctl step under the open it used, against the recording's.
  trace_lines KREPLAY "$log" | awk -v steps="$OUT/original-steps.txt" '
    BEGIN { while ((getline l < steps) > 0) { split(l, f, " "); open_of[f[1] " " f[2]] = f[3] } }
    { k = $1 " " $2; if (k in open_of) $1 = open_of[k]; print }' | ptr_normalized > "$orig"
  trace_lines RKREPLAY "$log" | ptr_normalized > "$rec"
  {
    { sed -n 's/^RKREPLAY: FAIL \(.*\)$/kernel: \1/p; s/^RUREPLAY: FAIL \(.*\)$/uiommufd: \1/p' "$log" || true; } \
      | sed 's|^\([a-z]*: \)[^:]*/|\1|' | rename_recordings_after_side | sed "s/^/$VARIANT fail /"
    trace_diff "$orig" "$rec" 2>"$OUT/recorded-steps.txt" \
      | sed -E "s/^/$VARIANT original /; s/ kernel=([^ ]*) uiommufd=/ original=\\1 recorded=/"
  } | sort -u > "$got"
  steps=$(cat "$OUT/recorded-steps.txt")
  echo "[$VARIANT] original vs recorded, both on the kernel: $steps ioctl steps compared; $(grep -c ' original ' "$got" || true) item(s) differ"
  echo "[$VARIANT] recorded differences: $(wc -l < "$got")"
  sed 's/^/  /' "$got" | cut -c1-400
  { grep -h "^$VARIANT " "$RECORDED_EXPECTED" 2>/dev/null || true; } \
    | sed -E 's/[[:space:]]+#[[:space:]].*$//; s/[[:space:]]*$//' | sort -u > "$exp"
  if [ "$update" = 1 ]; then
    # Keep the other variants' lines, and the reason of every line that stays.
    { recorded_expected_header; echo
      { { grep -v -e '^#' -e '^$' "$RECORDED_EXPECTED" 2>/dev/null || true; } | { grep -v "^$VARIANT " || true; }
        awk 'FILENAME == ARGV[1] { l = $0; sub(/[[:space:]]+#[[:space:]].*$/, "", l); if (l != $0) why[l] = substr($0, length(l) + 1); next }
             { print $0 (($0 in why) ? why[$0] : "  # TODO: why") }' <(grep -v '^#' "$RECORDED_EXPECTED" 2>/dev/null || true) "$got"
      } | sort; } > "$RECORDED_EXPECTED.new"
    mv "$RECORDED_EXPECTED.new" "$RECORDED_EXPECTED"
    echo "rewrote ${RECORDED_EXPECTED#"$ROOT"/} ($VARIANT)"; cp "$got" "$exp"
  fi
  report_changes "recorded difference(s)" "$RECORDED_EXPECTED" "$(comm -13 "$exp" "$got")" "$(comm -23 "$exp" "$got")" || rc=1
  [ $rc = 0 ] && echo "[$VARIANT] PASS: recorded sessions: the $(wc -l < "$exp") listed difference(s), no others"
  trace_judge "$log" recorded RKREPLAY RUREPLAY || rc=1
  return $rc
}

# rename_recordings_after_side: rename_recordings for "SIDE: NAME:LINE: ..." lines.
rename_recordings_after_side() {
  awk -v map="$OUT/recording-names.txt" '
    BEGIN { while ((getline l < map) > 0) { split(l, f, " "); name[f[1]] = f[2] } }
    { i = index($0, ": "); side = substr($0, 1, i + 1); rest = substr($0, i + 2)
      n = rest; sub(/:.*$/, "", n); if (n in name) rest = name[n] substr(rest, length(n) + 1); print side rest }'
}

# ---- the kernel's own selftest: the kernel vs uiommufd, instance by instance ----

ks_expected_header() {
  cat <<'EOF'
# Instances of the kernel's iommufd selftest (tools/testing/selftests/iommu/iommufd, linux-source-7.2)
# whose result differs between the real Linux 7.2 (IOMMUFD_TEST, in scripts/refkernel.sh's test
# guest) and uiommufd (scripts/kselftest.sh's run, its output.tap): "INSTANCE kernel=X uiommufd=Y",
# X and Y one of pass, fail, skip (absent: not reported). scripts/refkernel.sh fails when the set
# differs: a new difference, or one that went away (an improvement: delete its line, or run
# scripts/refkernel.sh --variant test --update-expected). docs/kselftest.md says why each differs.
EOF
}

# ks_results TAP OUT: "name status" per instance, sorted, into OUT; fails unless TAP has a plan, as
# many results, and no name twice (a crash or a filtered run cannot be compared).
ks_results() {
  local tap=$1 out=$2 plan n dups
  tap_results "$tap" | sort > "$out"
  plan=$(tap_plan "$tap"); n=$(wc -l < "$out")
  if [ -z "$plan" ] || [ "$n" != "$plan" ]; then
    echo "[$VARIANT] FAIL: $tap: $n results for a plan of ${plan:-none} (crashed, cut short or filtered)"
    return 1
  fi
  dups=$(cut -d' ' -f1 "$out" | uniq -d)
  [ -z "$dups" ] || { echo "[$VARIANT] FAIL: $tap reports an instance twice: $dups"; return 1; }
}

# ks_judge LOG: the kernel's TAP (KSELFTEST: lines of LOG) against uiommufd's ($KSELFTEST_TAP); the
# instances whose results differ must be the lines of $KSELFTEST_EXPECTED.
ks_judge() {
  local log=$1 ktap=$OUT/kselftest-kernel.tap k=$OUT/kselftest-kernel.txt u=$OUT/kselftest-uiommufd.txt
  local got=$OUT/kselftest-differences.txt exp=$OUT/kselftest-expected.txt rc=0 new gone ran
  # "exit N, S s": the binary's status and its time in the guest (from its uptime stamps).
  ran=$(sed -n 's/^REFKERNEL: kselftest exit \([0-9]*\) (uptime \([0-9.]*\) -> \([0-9.]*\))$/\1 \2 \3/p' "$log" \
    | tail -n1 | awk '{ printf "exit %d, %.1f s", $1, $3 - $2 }')
  [ -n "$ran" ] || { echo "[$VARIANT] FAIL: no kernel selftest run in $log"; return 1; }
  sed -n 's/^KSELFTEST: //p' "$log" > "$ktap"
  tap_results "$ktap" > "$k"
  echo "[$VARIANT] kselftest on the kernel  : $(tap_counts "$k" "$(tap_plan "$ktap")") ($ran)"
  ks_results "$ktap" "$k" || return 1
  if [ ! -f "$KSELFTEST_TAP" ]; then
    if [ "${CI:-}" = true ]; then
      echo "[$VARIANT] FAIL: no uiommufd selftest result at $KSELFTEST_TAP (scripts/kselftest.sh runs first)"
      return 1
    fi
    echo "[$VARIANT] kselftest: no uiommufd result at $KSELFTEST_TAP; comparison skipped (run scripts/kselftest.sh first)"
    return 0
  fi
  tap_results "$KSELFTEST_TAP" > "$u"
  echo "[$VARIANT] kselftest on uiommufd    : $(tap_counts "$u" "$(tap_plan "$KSELFTEST_TAP")") ($KSELFTEST_TAP, $(date -r "$KSELFTEST_TAP" '+%F %T'))"
  ks_results "$KSELFTEST_TAP" "$u" || return 1
  join -a1 -a2 -e absent -o 0,1.2,2.2 "$k" "$u" > "$OUT/kselftest-both.txt"
  awk '$2 != $3 { print $1 " kernel=" $2 " uiommufd=" $3 }' "$OUT/kselftest-both.txt" > "$got"
  awk -v v="$VARIANT" '
    { kp = $2 == "pass"; up = $3 == "pass"; K += kp; U += up; B += kp && up; OK += kp && !up; OU += up && !kp }
    END { printf "[%s] kselftest passes: kernel %d, uiommufd %d, both %d, only the kernel %d, only uiommufd %d\n", v, K, U, B, OK, OU }' \
    "$OUT/kselftest-both.txt"
  echo "[$VARIANT] kselftest instances whose results differ: $(wc -l < "$got")"
  sed 's/^/  /' "$got"
  read_expected "$KSELFTEST_EXPECTED" "$exp"
  if [ "$update" = 1 ]; then
    { ks_expected_header; echo; cat "$got"; } > "$KSELFTEST_EXPECTED"
    echo "rewrote ${KSELFTEST_EXPECTED#"$ROOT"/}: $(wc -l < "$got") line(s)"
    cp "$got" "$exp"
  fi
  new=$(comm -13 "$exp" "$got"); gone=$(comm -23 "$exp" "$got")
  # The list is made where root lacks CAP_SYS_RESOURCE (uiommufd then fails global_options, as the
  # kernel would there); where root has it, that difference may go away.
  local cap_line="iommufd.global_options kernel=pass uiommufd=fail"
  if grep -qx "$cap_line" <<<"$gone" && has_cap_sys_resource; then
    echo "[$VARIANT] note: iommufd.global_options passed on uiommufd (this root has CAP_SYS_RESOURCE)"
    gone=$(grep -vx "$cap_line" <<<"$gone" || true)
  fi
  report_changes "kselftest difference(s)" "$KSELFTEST_EXPECTED" "$new" "$gone" || rc=1
  [ $rc = 0 ] && echo "[$VARIANT] PASS: kselftest: the $(wc -l < "$exp") listed difference(s) between the kernel and uiommufd, no others"
  return $rc
}

# self_test: the judging on sample logs against scratch expected lists.
self_test() {
  local d
  d=$(mktemp -d)
  trap 'rm -rf "$d"' RETURN
  set_variant test
  OUT=$d; ROOT=$d; EXPECTED=$d/expected
  cat > "$d/ok.log" <<'EOF'
KREPLAY: PASS /replay/a.jsonl
KREPLAY: FAIL /replay/b.jsonl:7: step 6: ioctl 0x3b9f: expected EFAULT, got ENOTTY
KREPLAY: 1 passed, 1 failed
UREPLAY: PASS /replay/a.jsonl
UREPLAY: PASS /replay/b.jsonl
UREPLAY: 2 passed, 0 failed
EOF
  printf '# c\n\nkernel: b.jsonl:7: step 6: ioctl 0x3b9f: expected EFAULT, got ENOTTY  \n' > "$EXPECTED"
  judge "$d/ok.log" > "$d/out" || die "self-test: a matching log was judged a failure: $(cat "$d/out")"
  : > "$EXPECTED"
  if judge "$d/ok.log" > "$d/out"; then die "self-test: an unlisted kernel failure passed"; fi
  grep -q '^  kernel: b.jsonl:7: step 6' "$d/out" || die "self-test: NEW not shown: $(cat "$d/out")"
  printf 'kernel: b.jsonl:7: step 6: ioctl 0x3b9f: expected EFAULT, got ENOTTY\nuiommufd: a.jsonl:1: step 1: x\n' > "$EXPECTED"
  if judge "$d/ok.log" > "$d/out"; then die "self-test: a listed failure that went away passed"; fi
  grep -q 'GONE' "$d/out" || die "self-test: GONE not shown: $(cat "$d/out")"
  grep -v '^UREPLAY: [0-9]' "$d/ok.log" > "$d/cut.log"
  printf 'kernel: b.jsonl:7: step 6: ioctl 0x3b9f: expected EFAULT, got ENOTTY\n' > "$EXPECTED"
  if judge "$d/cut.log" > "$d/out"; then die "self-test: a log without the uiommufd summary passed"; fi
  sed 's/^UREPLAY: PASS \/replay\/b.jsonl$/UREPLAY: FAIL \/replay\/b.jsonl:3: step 2: y/; s/2 passed, 0/1 passed, 1/' "$d/ok.log" > "$d/u.log"
  if judge "$d/u.log" > "$d/out"; then die "self-test: an unlisted uiommufd failure passed"; fi
  grep -q '^  uiommufd: b.jsonl:3: step 2: y$' "$d/out" || die "self-test: uiommufd failure not shown: $(cat "$d/out")"
  update=1; judge "$d/u.log" > /dev/null || die "self-test: --update-expected did not pass"; update=0
  judge "$d/u.log" > /dev/null || die "self-test: the updated list does not match"
  grep -q '^# Replay steps' "$EXPECTED" || die "self-test: header missing"
  ks_self_test "$d"
  trace_self_test "$d"
  recorded_self_test "$d"
  echo "self-test ok"
}

# trace_self_test DIR: the trace comparison on sample logs (called by self_test; OUT=DIR).
trace_self_test() {
  local d=$1
  TRACE_EXPECTED=$d/trace-expected
  cat > "$d/tr.log" <<'EOF'
KREPLAY: TRACE /replay/a.jsonl 2 IOMMU_IOAS_ALLOC result=0 size=0xc flags=0x0 out_ioas_id=0x1
KREPLAY: TRACE /replay/a.jsonl 4 IOMMU_IOAS_IOVA_RANGES result=0 size=0x20 ioas_id=0x1 num_iovas=0x1 allowed_iovas=&r+0x0 *allowed_iovas=16:(00*8)(ff*8)
KREPLAY: TRACE /replay/a.jsonl 5 IOMMU_DESTROY result=0 size=0x8 id=0x1
KREPLAY: PASS /replay/a.jsonl
UREPLAY: TRACE /replay/a.jsonl 2 IOMMU_IOAS_ALLOC result=0 size=0xc flags=0x0 out_ioas_id=0x1
UREPLAY: TRACE /replay/a.jsonl 4 IOMMU_IOAS_IOVA_RANGES result=0 size=0x20 ioas_id=0x1 num_iovas=0x2 allowed_iovas=&r+0x0 *allowed_iovas=16:(00*8)(fe*8)
UREPLAY: FAIL /replay/a.jsonl:9: step 4: IOMMU_IOAS_IOVA_RANGES: out.num_iovas expected 0x1, got 0x2
EOF
  local want="test corpus a.jsonl 4 IOMMU_IOAS_IOVA_RANGES *allowed_iovas kernel=16:(00*8)(ff*8) uiommufd=16:(00*8)(fe*8)
test corpus a.jsonl 4 IOMMU_IOAS_IOVA_RANGES num_iovas kernel=0x1 uiommufd=0x2
test corpus a.jsonl 5 IOMMU_DESTROY step kernel=ran uiommufd=absent"
  { echo "# c"; sed 's/$/  # why/' <<<"$want"; echo "prod corpus b.jsonl 1 X result kernel=0 uiommufd=EINVAL  # other variant"; } > "$TRACE_EXPECTED"
  trace_judge "$d/tr.log" corpus > "$d/out" || die "self-test: trace: listed differences judged a failure: $(cat "$d/out")"
  grep -q '2 ioctl steps on both sides' "$d/out" || die "self-test: trace: step count: $(cat "$d/out")"
  [ "$(cat "$OUT/trace-corpus-differences.txt")" = "$want" ] || die "self-test: trace differences: $(cat "$OUT/trace-corpus-differences.txt")"
  grep -v 'num_iovas' "$TRACE_EXPECTED" > "$d/te" && mv "$d/te" "$TRACE_EXPECTED"
  if trace_judge "$d/tr.log" corpus > "$d/out"; then die "self-test: trace: an unlisted difference passed"; fi
  grep -q '^  test corpus a.jsonl 4 IOMMU_IOAS_IOVA_RANGES num_iovas kernel=0x1 uiommufd=0x2$' "$d/out" \
    || die "self-test: trace: NEW not shown: $(cat "$d/out")"
  if trace_judge "$d/tr.log" probe > "$d/out"; then die "self-test: trace: another mode's list was used"; fi
  { grep -v num_iovas <<<"$want" | sed 's/$/  # why/'; echo "test corpus a.jsonl 2 IOMMU_IOAS_ALLOC out_ioas_id kernel=0x1 uiommufd=0x2"; } > "$TRACE_EXPECTED"
  if trace_judge "$d/tr.log" corpus > "$d/out"; then die "self-test: trace: a listed difference that went away passed"; fi
  grep -q 'GONE' "$d/out" || die "self-test: trace: GONE not shown: $(cat "$d/out")"
  # --update-expected keeps the reasons and the other variants' lines.
  echo "prod corpus b.jsonl 1 X result kernel=0 uiommufd=EINVAL  # other variant" >> "$TRACE_EXPECTED"
  update=1; trace_judge "$d/tr.log" corpus > /dev/null || die "self-test: trace --update-expected did not pass"; update=0
  trace_judge "$d/tr.log" corpus > /dev/null || die "self-test: trace: the updated list does not match"
  grep -q 'num_iovas kernel=0x1 uiommufd=0x2  # TODO: why$' "$TRACE_EXPECTED" || die "self-test: trace update: $(cat "$TRACE_EXPECTED")"
  grep -q 'step kernel=ran uiommufd=absent  # why$' "$TRACE_EXPECTED" || die "self-test: trace update lost a reason"
  grep -q '^prod corpus b.jsonl 1 X result kernel=0 uiommufd=EINVAL  # other variant$' "$TRACE_EXPECTED" \
    || die "self-test: trace update lost another variant's line"
  ! grep -q 'out_ioas_id' "$TRACE_EXPECTED" || die "self-test: trace update kept a gone line"
  grep -v 'UREPLAY: TRACE' "$d/tr.log" > "$d/notrace.log"
  if trace_judge "$d/notrace.log" corpus > "$d/out"; then die "self-test: trace: a log without uiommufd's trace passed"; fi
}

# recorded_self_test DIR: the recorded-session comparison on a sample log (called by self_test).
recorded_self_test() {
  local d=$1 s=$1/rs
  RECORDED_EXPECTED=$d/rec-expected; TRACE_EXPECTED=$d/rec-trace-expected
  mkdir -p "$s"
  printf '{"open": "iommu"}\n{"buffer": "b", "size": 4096}\n{"ioctl": "IOMMU_IOAS_ALLOC"}\n' > "$s/a.jsonl"
  printf '# c\n{"open": "iommu"}\n{"open": "iommu", "as": "two"}\n{"ioctl": "IOMMU_IOAS_ALLOC", "fd": "two"}\n{"ioctl": "IOMMU_DESTROY", "args": {"id": 1}}\n' > "$s/b.jsonl"
  cat > "$d/rec.log" <<'EOS'
KREPLAY: TRACE /replay/a.jsonl 3 IOMMU_IOAS_ALLOC result=0 arg=&b+0x0 out_ioas_id=0x1
KREPLAY: TRACE /replay/b.jsonl 3 IOMMU_IOAS_ALLOC result=0 out_ioas_id=0x1
KREPLAY: TRACE /replay/b.jsonl 4 IOMMU_DESTROY result=ENOENT id=0x1
RECORDING: uiommufd-9-ctx10.jsonl: {"open": "iommu"}
RECORDING: uiommufd-9-ctx2.jsonl: {"open": "iommu"}
RECORDING: uiommufd-9-ctx3.jsonl: {"open": "iommu"}
RKREPLAY: TRACE /rec/uiommufd-9-ctx2.jsonl 2 IOMMU_IOAS_ALLOC result=0 out_ioas_id=0x1
RKREPLAY: TRACE /rec/uiommufd-9-ctx3.jsonl 2 IOMMU_DESTROY result=ENOENT id=0x1
RKREPLAY: TRACE /rec/uiommufd-9-ctx10.jsonl 2 IOMMU_IOAS_ALLOC result=0 out_ioas_id=0x1
RKREPLAY: 3 passed, 0 failed
RUREPLAY: TRACE /rec/uiommufd-9-ctx2.jsonl 2 IOMMU_IOAS_ALLOC result=0 out_ioas_id=0x1
RUREPLAY: TRACE /rec/uiommufd-9-ctx3.jsonl 2 IOMMU_DESTROY result=ENOENT id=0x1
RUREPLAY: TRACE /rec/uiommufd-9-ctx10.jsonl 2 IOMMU_IOAS_ALLOC result=0 out_ioas_id=0x1
RUREPLAY: 3 passed, 0 failed
EOS
  : > "$RECORDED_EXPECTED"; : > "$TRACE_EXPECTED"
  recorded_judge "$d/rec.log" "$s" > "$d/out" || die "self-test: recorded: a faithful recording failed: $(cat "$d/out")"
  grep -q '^uiommufd-9-ctx10.jsonl b.jsonl#two$' "$OUT/recording-names.txt" || die "self-test: recorded names: $(cat "$OUT/recording-names.txt")"
  grep -q '3 ioctl steps compared; 0 item' "$d/out" || die "self-test: recorded: $(cat "$d/out")"
  sed 's/^\(RKREPLAY: TRACE .*ctx10.jsonl 2 IOMMU_IOAS_ALLOC result=\)0 out_ioas_id=0x1/\1EINVAL out_ioas_id=0x0/; s/^RKREPLAY: 3 passed, 0 failed/RKREPLAY: FAIL \/rec\/uiommufd-9-ctx10.jsonl:2: step 2: x\nRKREPLAY: 2 passed, 1 failed/' "$d/rec.log" > "$d/rec-bad.log"
  if recorded_judge "$d/rec-bad.log" "$s" > "$d/out"; then die "self-test: recorded: an unfaithful recording passed"; fi
  grep -q '^  test fail kernel: b.jsonl#two:2: step 2: x$' "$d/out" || die "self-test: recorded fail line: $(cat "$d/out")"
  grep -q '^  test original b.jsonl#two 1 IOMMU_IOAS_ALLOC result original=0 recorded=EINVAL$' "$d/out" || die "self-test: recorded original: $(cat "$d/out")"
  grep -q '^  test recorded b.jsonl#two 2 IOMMU_IOAS_ALLOC result kernel=EINVAL uiommufd=0$' "$d/out" || die "self-test: recorded trace: $(cat "$d/out")"
  grep -v 'ctx3' "$d/rec.log" > "$d/rec-short.log"
  if recorded_judge "$d/rec-short.log" "$s" > "$d/out"; then die "self-test: recorded: a missing recording passed"; fi
  printf 'test original a.jsonl 1 IOMMU_IOAS_ALLOC result original=0 recorded=EBUSY  # why\n' > "$RECORDED_EXPECTED"
  if recorded_judge "$d/rec.log" "$s" > "$d/out"; then die "self-test: recorded: a listed difference that went away passed"; fi
  grep -q GONE "$d/out" || die "self-test: recorded GONE: $(cat "$d/out")"
}

# ks_self_test DIR: the selftest comparison on sample TAP streams (called by self_test; OUT=DIR).
ks_self_test() {
  local d=$1 cap=iommufd.global_options
  KSELFTEST_EXPECTED=$d/ks-expected; KSELFTEST_TAP=$d/u.tap
  # The kernel's run as the guest prints it, with a diagnostic that looks like a result.
  cat > "$d/ks.log" <<EOF
REFKERNEL: kselftest exit 0 (uptime 2.50 -> 13.00)
KSELFTEST: TAP version 13
KSELFTEST: 1..3
KSELFTEST: ok 1 $cap
KSELFTEST: # ok 9 not.a.result
KSELFTEST: ok 2 iommufd_ioas.mock_domain.fork_gone
KSELFTEST: ok 3 iommufd_viommu.no_viommu.hw_queue # SKIP no vIOMMU
REFKERNEL: done
EOF
  printf 'TAP version 13\n1..3\nnot ok 1 %s\nnot ok 2 iommufd_ioas.mock_domain.fork_gone\nok 3 iommufd_viommu.no_viommu.hw_queue # SKIP x\n' \
    "$cap" > "$KSELFTEST_TAP"
  local both="$cap kernel=pass uiommufd=fail
iommufd_ioas.mock_domain.fork_gone kernel=pass uiommufd=fail"
  printf '# c\n\n%s\n' "$both" > "$KSELFTEST_EXPECTED"
  ks_judge "$d/ks.log" > "$d/out" || die "self-test: kselftest: matching results judged a failure: $(cat "$d/out")"
  grep -q 'kernel 2, uiommufd 0, both 0, only the kernel 2, only uiommufd 0$' "$d/out" \
    || die "self-test: kselftest totals: $(cat "$d/out")"
  grep -q '(exit 0, 10.5 s)$' "$d/out" || die "self-test: kselftest run time: $(cat "$d/out")"
  : > "$KSELFTEST_EXPECTED"
  if ks_judge "$d/ks.log" > "$d/out"; then die "self-test: kselftest: unlisted differences passed"; fi
  grep -q "^  iommufd_ioas.mock_domain.fork_gone kernel=pass uiommufd=fail$" "$d/out" \
    || die "self-test: kselftest NEW not shown: $(cat "$d/out")"
  printf '%s\niommufd.simple_close kernel=pass uiommufd=fail\n' "$both" > "$KSELFTEST_EXPECTED"
  if ks_judge "$d/ks.log" > "$d/out"; then die "self-test: kselftest: a difference that went away passed"; fi
  grep -q '^  iommufd.simple_close kernel=pass uiommufd=fail$' "$d/out" || die "self-test: kselftest GONE: $(cat "$d/out")"
  # Where root has CAP_SYS_RESOURCE, uiommufd passing global_options is no news; elsewhere it is.
  printf '%s\n' "$both" > "$KSELFTEST_EXPECTED"
  sed "s/^not ok 1 $cap/ok 1 $cap/" "$d/u.tap" > "$d/u-cap.tap"
  (KSELFTEST_TAP=$d/u-cap.tap; has_cap_sys_resource() { true; }; ks_judge "$d/ks.log") > "$d/out" \
    || die "self-test: kselftest: global_options with CAP_SYS_RESOURCE: $(cat "$d/out")"
  if (KSELFTEST_TAP=$d/u-cap.tap; has_cap_sys_resource() { false; }; ks_judge "$d/ks.log") > "$d/out"; then
    die "self-test: kselftest: global_options passing without CAP_SYS_RESOURCE was not flagged"
  fi
  # Runs that cannot be compared: cut short, not run, an instance missing on one side.
  # Both cut short the same way (a crash at the same test): only the plan shows it.
  grep -v 'fork_gone' "$d/ks.log" > "$d/cut.log"; grep -v 'fork_gone' "$d/u.tap" > "$d/u-cut.tap"
  printf '%s kernel=pass uiommufd=fail\n' "$cap" > "$d/ks-expected-cut"
  if (KSELFTEST_TAP=$d/u-cut.tap; KSELFTEST_EXPECTED=$d/ks-expected-cut; ks_judge "$d/cut.log") > "$d/out"; then
    die "self-test: kselftest: TAP streams short of their plan passed"
  fi
  if (KSELFTEST_EXPECTED=$d/ks-expected-cut; ks_judge "$d/cut.log") > "$d/out"; then
    die "self-test: kselftest: a kernel TAP short of its plan passed"
  fi
  grep -v '^REFKERNEL: kselftest exit' "$d/ks.log" > "$d/norun.log"
  if ks_judge "$d/norun.log" > "$d/out"; then die "self-test: kselftest: a log without the run passed"; fi
  printf '1..3\nnot ok 1 %s\nnot ok 2 iommufd_ioas.other.fork_gone\nok 3 iommufd_viommu.no_viommu.hw_queue\n' "$cap" > "$d/u-other.tap"
  if (KSELFTEST_TAP=$d/u-other.tap; ks_judge "$d/ks.log") > "$d/out"; then die "self-test: kselftest: differing instance sets passed"; fi
  grep -q '^  iommufd_ioas.other.fork_gone kernel=absent uiommufd=fail$' "$d/out" || die "self-test: kselftest absent: $(cat "$d/out")"
  # uiommufd's result missing: only a note outside CI, a failure under CI=true.
  (KSELFTEST_TAP=$d/none.tap; CI=; ks_judge "$d/ks.log") > "$d/out" || die "self-test: kselftest: no TAP outside CI failed"
  grep -q 'comparison skipped' "$d/out" || die "self-test: kselftest: no note: $(cat "$d/out")"
  if (KSELFTEST_TAP=$d/none.tap; CI=true; ks_judge "$d/ks.log") > "$d/out"; then die "self-test: kselftest: no TAP under CI=true passed"; fi
  # --update-expected writes the header and the differences; the result judges clean.
  : > "$KSELFTEST_EXPECTED"
  update=1; ks_judge "$d/ks.log" > /dev/null || die "self-test: kselftest --update-expected did not pass"; update=0
  ks_judge "$d/ks.log" > /dev/null || die "self-test: kselftest: the updated list does not match"
  grep -q '^# Instances of the kernel' "$KSELFTEST_EXPECTED" || die "self-test: kselftest header missing"
}

# ---- differential probe ----
le32() { printf '%02x%02x%02x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
# words SIZE W...: SIZE then the words, as little-endian hex.
words() { local w; for w in "$@"; do le32 "$w"; done; }
rep() { local i out=""; for ((i = 0; i < $2; i++)); do out+="$1 "; done; echo "$out"; }

# gen_probes DIR: one script per (ioctl number, argument shape, starting state), each ending in one
# ioctl with "expect": "ok", so a FAIL line carries the errno the node answered.
gen_probes() {
  local d=$1 nr num shape st f
  rm -rf "$d"; mkdir -p "$d"
  local head_i='{"open": "iommu"}
{"buffer": "b", "size": 8192, "fill": "zero"}
{"buffer": "hole", "size": 4096, "prot": "none"}'
  for ((nr = 0x80; nr <= 0xa1; nr++)); do
    num=$(printf '0x3b%02x' $nr)
    for shape in hole size0 size4 size8z s64z s64ones s64ff s64id1 s64id2 s4096z s4096nz; do
      for st in fresh ioas; do
        f=$d/$(printf 'p%02x' $nr)_${shape}_$st.jsonl
        {
          echo "$head_i"
          [ $st = ioas ] && echo '{"ioctl": "IOMMU_IOAS_ALLOC"}'
          case $shape in
            hole) echo "{\"ioctl\": \"$num\", \"arg\": \"&hole\", \"expect\": \"ok\"}" ;;
            size0) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 0)\", \"expect\": \"ok\"}" ;;
            size4) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 4)\", \"expect\": \"ok\"}" ;;
            size8z) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 8 0)\", \"expect\": \"ok\"}" ;;
            s64z) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 $(rep 0 15))\", \"expect\": \"ok\"}" ;;
            s64ones) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 $(rep 1 15))\", \"expect\": \"ok\"}" ;;
            s64ff) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 $(rep 4294967295 15))\", \"expect\": \"ok\"}" ;;
            s64id1) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 0 1 1 1 $(rep 0 11))\", \"expect\": \"ok\"}" ;;
            s64id2) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 0 2 2 2 $(rep 0 11))\", \"expect\": \"ok\"}" ;;
            s4096z) printf '{"write": "&b", "hex": "%s"}\n{"ioctl": "%s", "arg": "&b", "expect": "ok"}\n' "$(words 4096)" "$num" ;;
            s4096nz) printf '{"write": "&b", "hex": "%s"}\n{"write": "&b+4095", "hex": "01"}\n{"ioctl": "%s", "arg": "&b", "expect": "ok"}\n' "$(words 4096)" "$num" ;;
          esac
        } > "$f"
      done
    done
  done
  local head_v='{"open": "vfio"}
{"buffer": "b", "size": 8192, "fill": "zero"}
{"buffer": "hole", "size": 4096, "prot": "none"}'
  for ((nr = 0x64; nr <= 0x77; nr++)); do
    num=$(printf '0x3b%02x' $nr)
    for shape in hole int0 int1 int8 s0 s64z s64ones s64ff; do
      # GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU take an integer: no struct shapes.
      case $nr:$shape in 100:s*|101:s*|102:s*) continue ;; esac
      for st in fresh type1v2; do
        f=$d/$(printf 'v%02x' $nr)_${shape}_$st.jsonl
        {
          echo "$head_v"
          [ $st = type1v2 ] && echo '{"ioctl": "VFIO_SET_IOMMU", "arg": 3, "expect": "any"}'
          case $shape in
            hole) echo "{\"ioctl\": \"$num\", \"arg\": \"&hole\", \"expect\": \"ok\"}" ;;
            int*) echo "{\"ioctl\": \"$num\", \"arg\": ${shape#int}, \"expect\": \"ok\"}" ;;
            s0) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 0 $(rep 0 15))\", \"expect\": \"ok\"}" ;;
            s64z) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 $(rep 0 15))\", \"expect\": \"ok\"}" ;;
            s64ones) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 $(rep 1 15))\", \"expect\": \"ok\"}" ;;
            s64ff) echo "{\"ioctl\": \"$num\", \"raw\": \"$(words 64 $(rep 4294967295 15))\", \"expect\": \"ok\"}" ;;
          esac
        } > "$f"
      done
    done
  done
}

# probe_outcomes PREFIX LOG: "name outcome" per probe (outcome: ok, the errno, or the message).
probe_outcomes() {
  { sed -n "s/^$1: \(PASS\|FAIL\) \/replay\/\([^/]*\)\.jsonl\(.*\)$/\2 \1\3/p" "$2" || true; } \
    | sed -E 's/ PASS$/ ok/; s/ FAIL:[0-9]+: step [0-9]+: [^:]*: expected [^,]*, got (.*)$/ \1/; s/ FAIL(.*)$/ FAIL\1/' | sort
}

# probe_judge LOG: the probes whose outcomes differ, against tests/refkernel-probe-expected.txt.
probe_judge() {
  local log=$1 k=$OUT/probe-kernel.txt u=$OUT/probe-uiommufd.txt got=$OUT/probe-differences.txt
  local exp=$OUT/probe-expected.txt file=$ROOT/tests/refkernel-probe-expected.txt n rc=0
  probe_outcomes KREPLAY "$log" > "$k"; probe_outcomes UREPLAY "$log" > "$u"
  n=$(ls "$OUT0/probe-scripts" | wc -l)
  if [ "$(wc -l < "$k")" != "$n" ] || [ "$(wc -l < "$u")" != "$n" ]; then
    echo "[$VARIANT] FAIL: $n probes, but $(wc -l < "$k") kernel and $(wc -l < "$u") uiommufd outcomes in $log"
    return 1
  fi
  join "$k" "$u" | awk -v v="$VARIANT" '{ku = $2; uu = $3; for (i = 4; i <= NF; i++) uu = uu " " $i
    if (ku != uu) print v " " $1 " kernel=" ku " uiommufd=" uu }' | sort > "$got"
  echo "[$VARIANT] $n probes; outcomes differ in $(wc -l < "$got"):"
  sed 's/^/  /' "$got"
  { grep -h "^$VARIANT " "$file" 2>/dev/null || true; } | sed 's/[[:space:]]*$//' | sort -u > "$exp"
  if [ "$update" = 1 ]; then
    { grep -v "^$VARIANT " "$file" 2>/dev/null || true; cat "$got"; } > "$file.new"
    { sed -n '/^#/p' "$file.new"; grep -v '^#' "$file.new" | grep -v '^$' | sort; } > "$file"; rm -f "$file.new"
    echo "rewrote tests/refkernel-probe-expected.txt ($VARIANT)"; cp "$got" "$exp"
  fi
  report_changes "probe difference(s)" "$file" "$(comm -13 "$exp" "$got")" "$(comm -23 "$exp" "$got")" || rc=1
  [ $rc = 0 ] && echo "[$VARIANT] PASS: the differences are the listed ones"
  return $rc
}

if [ $mode = selftest ]; then self_test; exit 0; fi
if [ $mode = log ]; then
  [ -f "$log_in" ] || die "no such log: $log_in"
  [ "$variants" != "test prod" ] || die "--log needs --variant test|prod"
  set_variant "$variants"
  rc=0
  judge "$log_in" || rc=1
  trace_judge "$log_in" corpus || rc=1
  if grep -q '^RKREPLAY: ' "$log_in"; then
    rm -rf "$OUT/corpus"
    gather_corpus "$OUT/corpus"
    recorded_judge "$log_in" "$OUT/corpus" || rc=1
  fi
  if grep -q '^REFKERNEL: kselftest exit' "$log_in"; then ks_judge "$log_in" || rc=1; fi
  exit $rc
fi

# ---- 1. the kernel image (cached) ----
if [ -n "${LINUX_SRC:-}" ]; then
  src=$LINUX_SRC
else
  src=$(LINUX_SOURCE_VERSION=${LINUX_SOURCE_VERSION:-$default_version} "$ROOT/scripts/fetch-linux-source.sh") \
    || die "fetching linux-source-7.2 failed"
fi
[ -f "$src/drivers/iommu/iommufd/main.c" ] || die "$src is not a kernel tree with iommufd"
kver=$(awk '/^VERSION =/ {v=$3} /^PATCHLEVEL =/ {p=$3} /^SUBLEVEL =/ {s=$3} END {print v "." p "." s}' "$src/Makefile")
CACHE=${REFKERNEL_CACHE:-${XDG_CACHE_HOME:-/var/cache}/uiommufd/refkernel}

# kernel_image: sets IMG for the current variant, building it where the cache has none.
kernel_image() {
  local key
  key=$kver-$(sha256sum < "$OUT/fragment" | cut -c1-16)
  IMG=$CACHE/$key/bzImage
  echo "[$VARIANT] kernel tree: $src ($kver); image: $IMG" >&2
  if [ -f "$IMG" ]; then
    echo "[$VARIANT] kernel image from the cache" >&2
    return 0
  fi
  local need=() b=$CACHE/build t0=$SECONDS t
  for t in flex bison bc; do command -v $t >/dev/null || need+=("$t"); done
  [ -e /usr/include/libelf.h ] || need+=(libelf-dev)
  [ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing build tools: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  mkdir -p "$b"
  make -s -C "$src" O="$b" tinyconfig >&2
  local args=() verb sym
  while read -r verb sym; do
    case $verb in
      enable) args+=(--enable "$sym") ;;
      disable) args+=(--disable "$sym") ;;
      ''|\#*) ;;
      *) die "refkernel.config: bad line: $verb $sym" ;;
    esac
  done < "$OUT/fragment"
  "$src/scripts/config" --file "$b/.config" "${args[@]}"
  make -s -C "$src" O="$b" olddefconfig >&2
  # IOMMU_PT_AMDV1 shows only once GENERIC_PT is selected: a second pass takes it and what follows.
  "$src/scripts/config" --file "$b/.config" "${args[@]}"
  make -s -C "$src" O="$b" olddefconfig >&2
  while read -r verb sym; do
    case $verb in
      enable) grep -qx "CONFIG_$sym=y" "$b/.config" || die "CONFIG_$sym=y did not take (see $b/.config)" ;;
      disable) ! grep -q "^CONFIG_$sym=" "$b/.config" || die "CONFIG_$sym is still set" ;;
    esac
  done < <(grep -v '^#' "$OUT/fragment")
  echo "[$VARIANT] building $kver in $b (make -j${REFKERNEL_JOBS:-2})" >&2
  make -s -C "$src" O="$b" -j"${REFKERNEL_JOBS:-2}" bzImage >&2
  mkdir -p "$CACHE/$key"
  cp "$b/.config" "$CACHE/$key/config"
  cp "$b/arch/x86/boot/bzImage" "$IMG.new" && mv "$IMG.new" "$IMG"
  echo "$((SECONDS - t0))" > "$CACHE/$key/build-seconds"
  echo "[$VARIANT] built $IMG in $((SECONDS - t0)) s" >&2
}

# run_kselftest: 1 when this run puts the kernel's selftest in the current variant's guest.
run_kselftest() {
  if [ $mode = run ] && [ $kselftest = 1 ] && [ "$VARIANT" = test ]; then echo 1; else echo 0; fi
}

# run_recorded: 1 when this run records the uiommufd run in the current variant's guest and replays
# the recordings on the kernel and on a fresh daemon.
run_recorded() {
  if [ $mode = run ] && [ "$VARIANT" = test ]; then echo 1; else echo 0; fi
}

# run_guest: the initramfs (busybox, uiommufd, the corpus, the selftest in the test variant), the
# boot, the log in $OUT/console.log.
run_guest() {
  local R=$OUT/root s
  guest_root "$R" replay run/u run/r rec
  guest_add_bin "$R" "$UIOMMUFD" uiommufd
  gather_corpus "$R/replay"
  local selftest=""
  if [ "$(run_kselftest)" = 1 ]; then
    guest_add_bin "$R" "$KSELFTEST_BIN" iommufd-selftest
    # After the daemon is gone: the kernel's selftest on the kernel's /dev/iommu, with the huge
    # pages scripts/kselftest.sh gives uiommufd's run.
    selftest=$(cat <<'EOS'
echo 128 > /proc/sys/vm/nr_hugepages
t0=$(cut -d' ' -f1 /proc/uptime)
echo "REFKERNEL: kselftest: vm.nr_hugepages $(cat /proc/sys/vm/nr_hugepages)"
/bin/iommufd-selftest >/tmp/ks.tap 2>&1
echo "REFKERNEL: kselftest exit $? (uptime $t0 -> $(cut -d' ' -f1 /proc/uptime))"
sed 's/^/KSELFTEST: /' /tmp/ks.tap
EOS
)
  fi
  # In the test variant's corpus run the uiommufd-side replays run under `uiommufd launch`: the
  # object-fd scripts' IOMMU_FAULT_QUEUE_ALLOC / VEVENTQ_ALLOC return an fd, which a FUSE node
  # cannot install in its caller (the kernel's node needs nothing: its replays run as they are).
  # The probe stays without it: it shows what a node alone answers.
  local ulaunch="" rlaunch=""
  if [ "$VARIANT" = test ] && [ "$mode" = run ]; then
    ulaunch="/bin/uiommufd launch --mount /run/u --"
    rlaunch="/bin/uiommufd launch --mount /run/r --"
  fi
  local record_flags="" recorded=""
  if [ "$(run_recorded)" = 1 ]; then
    # The uiommufd run records its sessions; once that daemon is gone (every session written),
    # the recordings replay on the kernel's nodes, then on a fresh daemon.
    record_flags="--record /rec"
    recorded=$(cat <<EOS
echo "REFKERNEL: recordings: \$(ls /rec | wc -l)"
for f in /rec/*.jsonl; do sed "s|^|RECORDING: \${f##*/}: |" "\$f"; done
t0=\$(cut -d' ' -f1 /proc/uptime)
/bin/uiommufd replay --trace --node /dev/iommu --vfio-node /dev/vfio/vfio /rec >/tmp/rk.log 2>&1
echo "REFKERNEL: recorded kernel replay exit \$? (uptime \$t0 -> \$(cut -d' ' -f1 /proc/uptime))"
sed 's/^/RKREPLAY: /' /tmp/rk.log
NO_COLOR=1 RUST_LOG=warn /bin/uiommufd serve $SERVE_FLAGS --transport fuse --mount /run/r >/tmp/daemon-r.log 2>&1 &
DPID=\$!
i=0
while [ \$i -lt 600 ] && ! [ -e /run/r/iommu ]; do
  kill -0 \$DPID 2>/dev/null || break
  sleep 0.1; i=\$((i+1))
done
t0=\$(cut -d' ' -f1 /proc/uptime)
if [ -e /run/r/iommu ]; then
  $rlaunch /bin/uiommufd replay --trace --node /run/r/iommu --vfio-node /run/r/vfio/vfio /rec >/tmp/ru.log 2>&1
  echo "REFKERNEL: recorded uiommufd replay exit \$? (uptime \$t0 -> \$(cut -d' ' -f1 /proc/uptime))"
  sed 's/^/RUREPLAY: /' /tmp/ru.log
else
  echo "REFKERNEL: /run/r/iommu did not appear"
fi
kill -TERM \$DPID 2>/dev/null
wait \$DPID
echo "REFKERNEL: fresh daemon exit \$?"
sed 's/^/DAEMON2: /' /tmp/daemon-r.log
EOS
)
  fi
  { guest_init_head REFKERNEL; cat <<EOF; } > "$R/init"
echo "REFKERNEL: nodes: \$(ls -l /dev/iommu /dev/vfio/vfio 2>&1 | tr '\n' ' ')"
t0=\$(cut -d' ' -f1 /proc/uptime)
/bin/uiommufd replay --trace --node /dev/iommu --vfio-node /dev/vfio/vfio /replay >/tmp/k.log 2>&1
echo "REFKERNEL: kernel replay exit \$? (uptime \$t0 -> \$(cut -d' ' -f1 /proc/uptime))"
sed 's/^/KREPLAY: /' /tmp/k.log
NO_COLOR=1 RUST_LOG=warn /bin/uiommufd serve $SERVE_FLAGS $record_flags --transport fuse --mount /run/u >/tmp/daemon.log 2>&1 &
DPID=\$!
i=0
while [ \$i -lt 600 ] && ! [ -e /run/u/iommu ]; do
  kill -0 \$DPID 2>/dev/null || break
  sleep 0.1; i=\$((i+1))
done
t0=\$(cut -d' ' -f1 /proc/uptime)
if [ -e /run/u/iommu ]; then
  $ulaunch /bin/uiommufd replay --trace --node /run/u/iommu --vfio-node /run/u/vfio/vfio /replay >/tmp/u.log 2>&1
  echo "REFKERNEL: uiommufd replay exit \$? (uptime \$t0 -> \$(cut -d' ' -f1 /proc/uptime))"
  sed 's/^/UREPLAY: /' /tmp/u.log
else
  echo "REFKERNEL: /run/u/iommu did not appear"
fi
kill -TERM \$DPID 2>/dev/null
wait \$DPID
echo "REFKERNEL: daemon exit \$?"
sed 's/^/DAEMON: /' /tmp/daemon.log
$recorded
$selftest
echo "REFKERNEL: done"
poweroff -f
EOF
  chmod +x "$R/init"
  guest_pack "$R" "$OUT/initrd.cpio.gz"
  LOG=$OUT/console.log
  GUEST_VMLINUZ=$IMG
  echo "[$VARIANT] booting $kver under TCG (log: $LOG)" >&2
  local t0=$SECONDS
  guest_boot "$LOG" "$BOOT_TIMEOUT" "$OUT/initrd.cpio.gz" "" -M q35 -cpu max -m 1G
  grep -E '^(REFKERNEL|KREPLAY|UREPLAY|RKREPLAY|RUREPLAY|DAEMON|DAEMON2):' "$LOG" | grep -v '^R\{0,1\}[KU]REPLAY: TRACE ' >&2 || true
  echo "[$VARIANT] qemu exit $GUEST_QEMU_RC after $((SECONDS - t0)) s" >&2
}

for v in $variants; do
  set_variant "$v"
  t0=$SECONDS
  kernel_image
  echo "[$v] kernel image: $((SECONDS - t0)) s" >&2
done
[ $mode = build ] && exit 0

command -v "$QEMU" >/dev/null || die "$QEMU not found"
# shellcheck source=scripts/lib-guest.sh
. "$ROOT/scripts/lib-guest.sh"
guest_build_uiommufd
guest_packages
if [ $mode = probe ]; then
  gen_probes "$OUT0/probe-scripts"
  REPLAY=$OUT0/probe-scripts
fi
if [ $mode = run ] && [ $kselftest = 1 ] && [[ " $variants " == *" test "* ]]; then
  if [ ! -x "$KSELFTEST_BIN" ]; then
    # CI builds it in scripts/kselftest.sh, before this script: missing there means a broken job.
    [ "${CI:-}" = true ] && die "no selftest binary at $KSELFTEST_BIN (scripts/kselftest.sh builds it)"
    LINUX_SRC=$src "$ROOT/scripts/kselftest.sh" --build-only >&2 || die "building the selftest failed"
    [ -x "$KSELFTEST_BIN" ] || die "scripts/kselftest.sh built no $KSELFTEST_BIN"
  fi
  [ -f "$KSELFTEST_TAP" ] || [ "${CI:-}" != true ] \
    || die "no uiommufd selftest result at $KSELFTEST_TAP (scripts/kselftest.sh runs first)"
fi
status=0
for v in $variants; do
  set_variant "$v"
  kernel_image
  run_guest
  if ! grep -qx 'REFKERNEL: done' "$LOG"; then
    echo "[$v] FAIL: the guest did not finish (see $LOG)"; tail -n 40 "$LOG"; status=1; continue
  fi
  if [ $mode = probe ]; then
    probe_judge "$LOG" || status=1
    trace_judge "$LOG" probe || status=1
  else
    judge "$LOG" || status=1
    trace_judge "$LOG" corpus || status=1
    if [ "$(run_recorded)" = 1 ]; then recorded_judge "$LOG" || status=1; fi
  fi
  if [ "$(run_kselftest)" = 1 ]; then ks_judge "$LOG" || status=1; fi
done
exit $status
