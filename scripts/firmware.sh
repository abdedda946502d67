#!/usr/bin/env bash
# Builds the firmware in targets/qemu for the lm3s6965evb (Cortex-M3), prints the sizes of the
# firmware binaries (firmware, db, cluster) and of the code-size probes (baseline, storage_size,
# counter_size, node_size) and the flash budget figure, then runs the probes, the crash-point
# firmware, the database firmware and the three-node cluster under qemu-system-arm. Exits with
# the first failing status of the three firmware runs (0: every check passed; 1: a failed check
# or a panic; 124: timeout).
# Run `bash scripts/deps.sh` first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/embedded-toolchain.sh

target=thumbv7m-none-eabi
budget_bytes=5120
qemu=(qemu-system-arm -cpu cortex-m3 -machine lm3s6965evb -nographic
  -semihosting-config enable=on,target=native -kernel)

echo "firmware: building for $target via $(embedded_route "$target")"
(cd targets/qemu && embedded_cargo "$target" build --release --locked)
out=targets/qemu/target/$target/release

# Bytes of one section of an ELF file (0 when absent), from binutils' size.
section() {
  size -A "$1" | awk -v name="$2" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }'
}

echo
echo "sizes (bytes; text = flash: vector table + .text + .rodata; data is in flash and RAM):"
binaries=(firmware db cluster baseline storage_size counter_size node_size)
size "${binaries[@]/#/$out/}"
printf '%-14s %8s %8s %8s %8s\n' binary .text .rodata .data .bss
for binary in "${binaries[@]}"; do
  printf '%-14s %8s %8s %8s %8s\n' "$binary" "$(section "$out/$binary" .text)" \
    "$(section "$out/$binary" .rodata)" "$(section "$out/$binary" .data)" \
    "$(section "$out/$binary" .bss)"
done

flash() { size "$1" | awk 'NR == 2 { print $1 }'; }
# Flash bytes and .text bytes that `$1` adds over `$2`.
delta() {
  echo "$(( $(flash "$out/$1") - $(flash "$out/$2") )) bytes of flash" \
    "($(( $(section "$out/$1" .text) - $(section "$out/$2" .text) )) of .text)"
}
flash_delta=$(( $(flash "$out/counter_size") - $(flash "$out/baseline") ))
if [ "$flash_delta" -le "$budget_bytes" ]; then verdict="within"; else verdict="OVER"; fi
echo
echo "flash budget ($budget_bytes bytes over a bare cortex-m-rt image): $verdict"
echo "  counter_size - baseline:     $(delta counter_size baseline): log, recovery, counter," \
  "RAM flash mock and NorFlash adapter"
echo "  counter_size - storage_size: $(delta counter_size storage_size): log, recovery, counter"
echo "  storage_size - baseline:     $(delta storage_size baseline): RAM flash mock and adapter"
echo
echo "the network half (distributed counter, driver, wire envelope with ChaCha20-Poly1305,"
echo "NalDatagram, loopback switch) over the durable counter:"
echo "  node_size - counter_size:    $(delta node_size counter_size)"
echo "  node_size - storage_size:    $(delta node_size storage_size): log, recovery and all of it"
echo "  cluster - firmware:          $(delta cluster firmware): the two test firmwares"

run() {
  local log status
  log=$(mktemp)
  set +e
  timeout "$1" "${qemu[@]}" "$2" 2>"$log"
  status=$?
  set -e
  # The lm3s6965evb model complains about a timer the firmware never starts.
  grep -v "Timer with period zero" "$log" >&2 || true
  rm -f "$log"
  return "$status"
}

echo
for probe in baseline storage_size counter_size node_size; do
  run 30 "$out/$probe"
done
echo
# Runs firmware `$1` with a timeout of 300 s, prints its status and wall time, and returns it.
run_firmware() {
  local start status=0
  start=$(date +%s%N)
  run 300 "$out/$1" || status=$?
  echo "$1: qemu exit status $status in $(( ($(date +%s%N) - start) / 1000000 )) ms"
  return "$status"
}

status=0
run_firmware firmware || status=$?
echo
db_status=0
run_firmware db || db_status=$?
if [ "$status" -eq 0 ]; then status=$db_status; fi
echo
cluster_status=0
run_firmware cluster || cluster_status=$?
if [ "$status" -eq 0 ]; then status=$cluster_status; fi
exit "$status"
