# Sourced by scripts/kselftest.sh and scripts/refkernel.sh: what both need to judge a run of the
# kernel's iommufd selftest. Its TAP stream (tools/testing/selftests/kselftest_harness.h) has one
# line a result:
#   ok N name [# message]  |  not ok N name  |  ok N name # SKIP reason  (also "not ok ... # SKIP")
# Diagnostics start with "#" and never count, even when they look like a result.

# tap_results TAP: "name pass|fail|skip" for every reported test, in report order. XFAIL counts as
# a pass (the harness reports it "ok"), a SKIP as a skip whatever its ok/not ok.
tap_results() {
  awk '/^(not )?ok [0-9]+ / {
      if ($1 == "ok") name = $3; else name = $4
      if (name == "" || name == "#") next
      if ($0 ~ / # SKIP/) status = "skip"; else if ($1 == "ok") status = "pass"; else status = "fail"
      print name, status
    }' "$1"
}

# tap_plan TAP: the planned number of tests ("1..N"), empty without a plan.
tap_plan() {
  awk '/^1\.\.[0-9]+/ { n = substr($1, 4) + 0 } END { if (n != "") print n }' "$1"
}

# tap_counts RESULTS PLAN: "P passed, F failed, S skipped" from tap_results output, noting a crash
# (fewer results than PLAN; PLAN may be empty).
tap_counts() {
  awk -v plan="$2" '{ n[$2]++ } END {
      printf "%d passed, %d failed, %d skipped", n["pass"], n["fail"], n["skip"]
      total = n["pass"] + n["fail"] + n["skip"]
      if (plan != "" && plan + 0 && total != plan) printf " (only %d of the %d planned tests reported)", total, plan
      printf "\n"
    }' "$1"
}

# has_cap_sys_resource: whether this (root) process has CAP_SYS_RESOURCE (bit 24 of CapEff). Without
# it IOMMU_OPTION RLIMIT_MODE SET is EPERM, so iommufd.global_options cannot pass.
has_cap_sys_resource() {
  local eff
  eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  [ -n "$eff" ] && (( (16#$eff >> 24) & 1 ))
}
