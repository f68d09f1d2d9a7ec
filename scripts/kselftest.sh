#!/usr/bin/env bash
# CI gate: the kernel's own iommufd selftest (tools/testing/selftests/iommu/iommufd, unmodified) run
# against uiommufd. Needs root (FUSE mount, mount namespace, vm.nr_hugepages).
#
#   scripts/kselftest.sh                    fetch + build the selftest, build the daemon, run, compare
#   scripts/kselftest.sh --build-only       stop after building target/kselftest/iommufd
#   scripts/kselftest.sh --update-expected  run, then rewrite tests/kselftest-expected.txt
#   scripts/kselftest.sh --tap FILE         no build/run: summarise and compare an existing TAP file
#   scripts/kselftest.sh --self-test        check the TAP summary and the comparison on a built-in sample
#
# Env:
#   LINUX_SRC=<tree>          use this unpacked kernel tree (skips scripts/fetch-linux-source.sh)
#   LINUX_SOURCE_VERSION      Debian version of linux-source-7.2 to fetch (default below; the fetch
#                             script falls back to the newest 7.2.x when it is gone from the archive)
#   CARGO_TARGET_DIR          cargo's target dir (default ./target); outputs go to $it/kselftest/
#   UIOMMUFD_CMD              daemon binary (default $CARGO_TARGET_DIR/debug/uiommufd, built here)
#   KSELFTEST_TIMEOUT         seconds for the whole selftest binary (default 1200; the harness also
#                             limits each test to 30 s)
#   KSELFTEST_ARGS            extra selftest arguments, e.g. "-f iommufd_ioas" (then only the tests
#                             that ran are compared)
#   KSELFTEST_HUGEPAGES       vm.nr_hugepages to set for the run when it is 0 (default 128: the
#                             128 MiB dirty-tracking variants need 64 2-MiB pages at once)
#   KSELFTEST_FAIL_NTH=1      also build iommufd_fail_nth (not run: it needs fault injection)
#
# Exit: 0 all expected tests passed and no unexpected pass; 1 regression, unexpected pass or
#       timeout; 2 the selftest could not be built or run.
set -euo pipefail
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
ks=$target/kselftest
expected_file=$root/tests/kselftest-expected.txt
default_version=7.2.12-1~bpo13+1

mode=run
update=0
tap_in=""
while [ $# -gt 0 ]; do
  case $1 in
    --build-only) mode=build ;;
    --update-expected) update=1 ;;
    --tap) tap_in=$2; mode=tap; shift ;;
    --self-test) mode=selftest ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "kselftest: $*" >&2; exit 2; }
# shellcheck source=scripts/lib-kselftest.sh
. "$root/scripts/lib-kselftest.sh"

# --- summary and comparison -------------------------------------------------------------------

# summarise TAP OUTDIR: prints the counts, writes OUTDIR/{passed,ran}.txt.
summarise() {
  local tap=$1 out=$2
  tap_results "$tap" > "$out/results.txt"
  tap_counts "$out/results.txt" "$(tap_plan "$tap")"
  awk '$2 == "pass" { print $1 }' "$out/results.txt" | sort -u > "$out/passed.txt"
  awk '{ print $1 }' "$out/results.txt" | sort -u > "$out/ran.txt"
}

expected_header() {
  cat <<'EOF'
# Instances of the kernel's iommufd selftest (tools/testing/selftests/iommu/iommufd, linux-source-7.2)
# that must pass against uiommufd: one fixture.variant.test name a line. scripts/kselftest.sh fails if
# one of them does not pass (regression) or if a test passes that is not listed here (add it, or run
# scripts/kselftest.sh --update-expected, which rewrites this file from target/kselftest/passed.txt).
#
# Beware of hollow progress: a server that "succeeds" without doing anything passes tests too. In
# planning, one answering 0 to every ioctl passed 48 of the 246 instances (and 10 skipped); a libfuse
# server answering 0 to restricted FUSE ioctls passes 1 (iommufd.simple_close). A pass count means
# something only beyond those, so review names before adding them. The ops that return a new fd
# (CREATE_ACCESS, FAULT_QUEUE_ALLOC, VEVENTQ_ALLOC, DMABUF_GET) work because the selftest runs under
# `uiommufd launch`; still out of reach: mmap of the iommufd, VmPin, CAP_SYS_RESOURCE on this
# machine, and fork_gone (pins outliving a dead process). docs/kselftest.md lists each one.
EOF
}

# compare OUTDIR: compares OUTDIR/passed.txt with the expected file; returns 1 on any difference.
compare() {
  local out=$1 filtered=$2 rc=0
  local exp=$out/expected.txt
  if [ -f "$expected_file" ]; then
    { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$expected_file" || true; } | sed 's/[[:space:]]*$//' | sort -u > "$exp"
  else
    : > "$exp"
  fi
  if [ "$filtered" = 1 ]; then
    # Only the tests that ran can be judged.
    comm -12 "$exp" "$out/ran.txt" > "$exp.ran"; mv "$exp.ran" "$exp"
  fi
  local regressions new
  regressions=$(comm -23 "$exp" "$out/passed.txt")
  new=$(comm -13 "$exp" "$out/passed.txt")
  # IOMMU_OPTION RLIMIT_MODE SET needs CAP_SYS_RESOURCE, which this project's machines lack (the
  # expected list is made there). Where root has it, the test may pass: not a surprise then.
  if [ -n "$new" ] && has_cap_sys_resource; then
    local cap_ok="iommufd.global_options"
    if grep -qx "$cap_ok" <<<"$new"; then
      echo "note: $cap_ok passed (this root has CAP_SYS_RESOURCE); not counted as new"
      new=$(grep -vx "$cap_ok" <<<"$new" || true)
    fi
  fi
  if [ -n "$regressions" ]; then
    echo "REGRESSION: $(wc -l <<<"$regressions") expected test(s) did not pass:"
    sed 's/^/  /' <<<"$regressions"
    rc=1
  fi
  if [ -n "$new" ]; then
    echo "NEW: $(wc -l <<<"$new") test(s) passed that are not in tests/kselftest-expected.txt; add them:"
    sed 's/^/  /' <<<"$new"
    rc=1
  fi
  [ $rc = 0 ] && echo "matches tests/kselftest-expected.txt ($(wc -l < "$exp") expected)"
  return $rc
}

update_expected() {
  local out=$1
  { expected_header; echo; cat "$out/passed.txt"; } > "$expected_file"
  echo "rewrote tests/kselftest-expected.txt: $(wc -l < "$out/passed.txt") passing test(s)"
}

finish() {
  local tap=$1 out=$2 filtered=${3:-0}
  summarise "$tap" "$out"
  if [ "$update" = 1 ]; then
    compare "$out" "$filtered" || true
    [ "$filtered" = 1 ] && die "--update-expected with KSELFTEST_ARGS would drop the tests that did not run"
    update_expected "$out"
    return 0
  fi
  compare "$out" "$filtered"
}

self_test() {
  local d
  d=$(mktemp -d)
  trap 'rm -rf "$d"' RETURN
  # A sample in the harness's format: pass, pass with message, fail, skip, xfail, a diagnostic that
  # looks like a result inside a comment, and a plan of 7 with only 6 results (a crash).
  cat > "$d/sample.tap" <<'EOF'
TAP version 13
1..7
# Starting 7 tests from 3 test cases.
#  RUN           iommufd.simple_close ...
#            OK  iommufd.simple_close
ok 1 iommufd.simple_close
ok 2 iommufd.cmd_fail #  with a message
#  RUN           iommufd_ioas.no_domain.area ...
# iommufd.c:42:area:Expected 0 (0) == ioctl(...) (-1)
# ok 99 not.a.result
#          FAIL  iommufd_ioas.no_domain.area
not ok 3 iommufd_ioas.no_domain.area
ok 4 iommufd_dirty_tracking.domain_dirty8k.enforce_dirty # SKIP Skipping buffer_size=8192
ok 5 iommufd_mock_domain.one_domain.basic # XFAIL known
not ok 6 iommufd_ioas.mock_domain.area # SKIP odd but possible
EOF
  local got want
  got=$(summarise "$d/sample.tap" "$d")
  want="3 passed, 1 failed, 2 skipped (only 6 of the 7 planned tests reported)"
  [ "$got" = "$want" ] || die "self-test: summary '$got', want '$want'"
  printf '%s\n' iommufd.cmd_fail iommufd.simple_close iommufd_mock_domain.one_domain.basic > "$d/want"
  cmp -s "$d/want" "$d/passed.txt" || die "self-test: passed.txt differs: $(cat "$d/passed.txt")"
  [ "$(wc -l < "$d/ran.txt")" = 6 ] || die "self-test: ran.txt has $(wc -l < "$d/ran.txt") lines"
  # Comparison, against a scratch expected file: a header-only file flags every pass as new.
  local expected_file=$d/expected
  expected_header > "$expected_file"
  if compare "$d" 0 > "$d/log"; then die "self-test: passes missing from a header-only file not flagged"; fi
  grep -q '^NEW: 3 ' "$d/log" || die "self-test: header-only comparison: $(cat "$d/log")"
  : > "$d/empty.tap"; summarise "$d/empty.tap" "$d" > /dev/null
  compare "$d" 0 > /dev/null || die "self-test: nothing expected, nothing passed must match"
  summarise "$d/sample.tap" "$d" > /dev/null
  printf '# comment\n\niommufd.simple_close\niommufd.cmd_fail  \niommufd_mock_domain.one_domain.basic\n' > "$expected_file"
  compare "$d" 0 > "$d/log" || die "self-test: exact match reported a difference: $(cat "$d/log")"
  printf 'iommufd.simple_close\niommufd_ioas.no_domain.area\n' > "$expected_file"
  if compare "$d" 0 > "$d/log"; then die "self-test: regression not detected"; fi
  grep -q '^REGRESSION: 1 ' "$d/log" && grep -q '^  iommufd_ioas.no_domain.area$' "$d/log" \
    && grep -q '^NEW: 2 ' "$d/log" && grep -q '^  iommufd.cmd_fail$' "$d/log" \
    || die "self-test: unexpected comparison output: $(cat "$d/log")"
  # Filtered run: expected tests that did not run are not regressions.
  printf 'iommufd.simple_close\nvfio_compat_mock_domain.Ver1v2.map\n' > "$expected_file"
  sed -i '/^ok [25] /d' "$d/sample.tap"; summarise "$d/sample.tap" "$d" > /dev/null
  compare "$d" 1 > "$d/log" || die "self-test: filtered comparison failed: $(cat "$d/log")"
  if compare "$d" 0 > "$d/log"; then die "self-test: unfiltered comparison missed a regression"; fi
  # --update-expected writes the header and the passing names; the result compares clean.
  update_expected "$d" > /dev/null
  grep -q '^# Beware of hollow progress' "$expected_file" || die "self-test: header missing"
  compare "$d" 0 > /dev/null || die "self-test: updated file does not match"
  echo "self-test ok"
}

case $mode in
  selftest) self_test; exit 0 ;;
  tap)
    [ -f "$tap_in" ] || die "no such TAP file: $tap_in"
    mkdir -p "$ks"
    finish "$tap_in" "$ks" "$([ -n "${KSELFTEST_ARGS:-}" ] && echo 1 || echo 0)"
    exit $? ;;
esac

# --- 1. kernel source -------------------------------------------------------------------------

if [ -n "${LINUX_SRC:-}" ]; then
  src=$LINUX_SRC
else
  src=$(LINUX_SOURCE_VERSION=${LINUX_SOURCE_VERSION:-$default_version} "$root/scripts/fetch-linux-source.sh") \
    || die "fetching linux-source-7.2 failed"
fi
sdir=$src/tools/testing/selftests/iommu
[ -f "$sdir/iommufd.c" ] || die "$src has no tools/testing/selftests/iommu/iommufd.c"
kver=$(awk '/^VERSION =/ {v=$3} /^PATCHLEVEL =/ {p=$3} /^SUBLEVEL =/ {s=$3} END {print v "." p "." s}' "$src/Makefile")
echo "kernel tree: $src ($kver)"

# --- 2. build the selftest, as shipped --------------------------------------------------------

command -v gcc > /dev/null && [ -e /usr/include/sys/capability.h ] || "$root/scripts/ci-install.sh"
mkdir -p "$ks/include/linux"
# "Install" the two uAPI headers the test includes from the tree (what `make headers` would do for
# them): the __user annotation only exists inside the kernel.
for h in iommufd vfio; do
  sed -E 's/([[:space:](*])__user([[:space:]*)])/\1\2/g; s/([[:space:](*])__user$/\1/' \
    "$src/include/uapi/linux/$h.h" > "$ks/include/linux/$h.h"
done
! grep -qw __user "$ks/include/linux/iommufd.h" "$ks/include/linux/vfio.h" || die "__user left in the headers"
# The flags of the selftest Makefile and lib.mk; the tree's layout stays, so the test's relative
# include of drivers/iommu/iommufd/iommufd_test.h resolves inside the tree.
cflags=(-Wall -O2 -Wno-unused-function -isystem "$ks/include" -I"$src/tools/testing/selftests"
        -D_GNU_SOURCE= '-D__counted_by(m)=')
build() {
  local t0=$SECONDS
  (cd "$sdir" && gcc "${cflags[@]}" "$1.c" -o "$ks/$1.new" -lcap) || return 1
  mv "$ks/$1.new" "$ks/$1"
  echo "built $ks/$1 in $((SECONDS - t0)) s"
}
build iommufd || die "building the iommufd selftest failed"
if [ "${KSELFTEST_FAIL_NTH:-0}" = 1 ]; then
  build iommufd_fail_nth || echo "warning: iommufd_fail_nth did not build" >&2
fi
[ $mode = build ] && exit 0

# --- 3. run it against uiommufd ---------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "running the selftest needs root"
daemon=${UIOMMUFD_CMD:-}
if [ -z "$daemon" ]; then
  (cd "$root" && cargo build --bin uiommufd) || die "building uiommufd failed"
  daemon=$target/debug/uiommufd
fi
[ -x "$daemon" ] || die "no daemon binary at $daemon"
# The selftest runs under `uiommufd launch`, which serves the ops that return a new fd
# (CREATE_ACCESS); KSELFTEST_LAUNCH=0 runs it bare.
if [ "${KSELFTEST_LAUNCH:-1}" = 1 ]; then
  if [ ! -x "$target/debug/uiommufd" ] || [ -n "${UIOMMUFD_CMD:-}" ]; then
    (cd "$root" && cargo build --bin uiommufd) || die "building uiommufd failed"
  fi
  export UIOMMUFD_LAUNCHER=$target/debug/uiommufd
else
  export UIOMMUFD_LAUNCHER=
fi

hp_file=/proc/sys/vm/nr_hugepages
hp_old=$(cat "$hp_file")
restore_hugepages() { [ "$hp_old" = 0 ] && echo 0 > "$hp_file" || true; }
if [ "$hp_old" = 0 ]; then
  trap restore_hugepages EXIT
  echo "${KSELFTEST_HUGEPAGES:-128}" > "$hp_file"
  echo "vm.nr_hugepages: 0 -> $(cat "$hp_file") for the run"
fi

tap=$ks/output.tap
rm -f "$tap"
rc=0
# A private mount namespace: the daemon's FUSE mount and its bind mount over /dev/iommu exist only
# for the selftest started in there, and vanish with the namespace.
unshare -m --propagation private \
  "$root/scripts/kselftest-run-ns.sh" "$daemon" "$ks/iommufd" "$tap" "${KSELFTEST_TIMEOUT:-1200}" \
  ${KSELFTEST_ARGS:-} || rc=$?
restore_hugepages
case $rc in
  0|1|4|124|137) ;;  # the selftest passed, failed, skipped or timed out: its output counts
  *) die "the run failed (exit $rc) before producing results; see $ks/daemon.log" ;;
esac
[ -s "$tap" ] || die "no selftest output in $tap"

# --- 4. summary -------------------------------------------------------------------------------

gate=0
finish "$tap" "$ks" "$([ -n "${KSELFTEST_ARGS:-}" ] && echo 1 || echo 0)" || gate=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  # Tests after the hang never ran: the gate cannot vouch for them.
  echo "FAIL: the selftest timed out after ${KSELFTEST_TIMEOUT:-1200} s (output in $tap)"
  gate=1
fi
exit $gate
