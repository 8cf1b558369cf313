#!/usr/bin/env bash
# Runs the ACL-over-fake test binaries under valgrind memcheck and prints each summary.
# Not part of CI (it takes minutes); needs valgrind (Debian package `valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p acl-fake --no-run 2>&1 | tail -1
status=0
target=$(scripts/target-dir.sh)
for t in acl_conformance acl_allocator_conformance acl_specific acl_fake_misuse acl_loading \
    acl_finalize_first acl_lost_device acl_env_faults; do
    bin=$(ls -t "$target"/debug/deps/${t}-* | grep -v '\.d$' | head -1)
    log="$target/valgrind-${t}.txt"
    if ! valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
        --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --num-callers=30 \
        "$bin" --test-threads=2 >"$log" 2>&1; then
        status=1
    fi
    echo "== $t"
    grep -E "test result|ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable" "$log" || true
done
exit $status
