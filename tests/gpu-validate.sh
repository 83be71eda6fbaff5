#!/usr/bin/env bash
# Compares `corral agent --once` with nvidia-smi, field by field, on a machine with
# NVIDIA GPUs, then checks NVML's recovery action and the kernel-log XID source.
# Usage: tests/gpu-validate.sh [path/to/corral]
# CORRAL_VALIDATE_INJECT_XID=1 (as root) also writes one harmless XID 13 line for the
# first GPU into /dev/kmsg and checks that corral counts it; leave it unset on a shared
# production node (other kernel-log tools would see the line too).
# Exit status: 0 all checks pass, 1 a mismatch, 2 cannot run (no nvidia-smi, no python3).
set -euo pipefail
CORRAL=${1:-target/release/corral}
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: run this on a GPU machine" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }
[ -x "$CORRAL" ] || { echo "$CORRAL is not executable; build with cargo build --release" >&2; exit 2; }

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
FIELDS=index,uuid,name,serial,pci.bus_id,driver_version,vbios_version,persistence_mode,compute_mode,ecc.mode.current,pcie.link.gen.max,pcie.link.width.max,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,clocks.sm,clocks.mem,pcie.link.width.current,ecc.errors.uncorrected.volatile.total
CORRAL_LOG=info "$CORRAL" agent --once > "$tmp/corral.json" 2> "$tmp/once.log"
nvidia-smi --query-gpu="$FIELDS" --format=csv,noheader,nounits > "$tmp/smi.csv"
# The kernel log as the agent would read it (dmesg may be restricted for non-root).
dmesg 2>/dev/null | grep -E 'NVRM: Xid|SXid \(' > "$tmp/xids.txt" || true
inject=""
if [ "${CORRAL_VALIDATE_INJECT_XID:-}" = 1 ]; then
  if [ "$(id -u)" = 0 ] && [ -w /dev/kmsg ]; then
    # The first GPU's address as the kernel log writes it (0000:18:00).
    inject=$(python3 -c '
import json, sys
for g in json.load(open(sys.argv[1]))["gpus"]:
    if g.get("parent_uuid") is None and g.get("pci_bus_id"):
        d, b, r = g["pci_bus_id"].split(":")
        print(f"{d[-4:]}:{b}:{r.split(".")[0]}".lower())
        break
' "$tmp/corral.json")
    if [ -n "$inject" ]; then
      echo "NVRM: Xid (PCI:$inject): 13, pid=0, name=corral-validate, injected by tests/gpu-validate.sh" > /dev/kmsg
      CORRAL_LOG=info "$CORRAL" agent --once > "$tmp/injected.json" 2> "$tmp/injected.log"
    fi
  else
    echo "CORRAL_VALIDATE_INJECT_XID=1 needs root and a writable /dev/kmsg; not injecting" >&2
  fi
fi

start=$(date +%s%N)
for _ in $(seq 20); do "$CORRAL" agent --once > /dev/null; done
end=$(date +%s%N)
echo "20 x corral agent --once: $(( (end - start) / 20000000 )) ms each (includes a 200 ms CPU-usage wait)"

FIELDS="$FIELDS" INJECT="$inject" python3 - "$tmp/corral.json" "$tmp/smi.csv" "$tmp/once.log" "$tmp/xids.txt" "$tmp/injected.json" <<'PY'
import csv, json, os, re, sys
report = json.load(open(sys.argv[1]))
fields = os.environ["FIELDS"].split(",")
gpus = {g["uuid"]: g for g in report["gpus"] if g.get("parent_uuid") is None}
bad = 0
MIB = 1024 * 1024

def na(v):
    return v.strip() in ("[N/A]", "N/A", "[Not Supported]", "")

def compare(uuid, field, smi, ours, kind, tol=0.0):
    global bad
    smi = smi.strip()
    if na(smi):
        ok = ours is None
        shown = "absent" if ok else f"corral has {ours!r}"
    elif ours is None:
        ok, shown = False, "corral has null"
    elif kind == "str":
        ok, shown = smi == str(ours), f"{ours!r}"
    elif kind == "bool":
        ok = (smi.lower() in ("enabled", "1", "yes")) == bool(ours)
        shown = f"{ours!r}"
    elif kind == "compute":
        ok = smi.lower().replace(" ", "_") == ours
        shown = f"{ours!r}"
    else:
        a, b = float(smi), float(ours)
        ok = abs(a - b) <= max(tol if kind == "abs" else abs(a) * tol, 1e-9)
        shown = f"{b:g}"
    print(f"{'ok ' if ok else 'BAD'} {uuid} {field}: nvidia-smi {smi!r}, corral {shown}")
    if not ok:
        bad += 1

rows = list(csv.reader(open(sys.argv[2]), skipinitialspace=True))
if len(rows) != len(gpus):
    print(f"BAD GPU count: nvidia-smi {len(rows)}, corral {len(gpus)}"); bad += 1
for row in rows:
    r = dict(zip(fields, row))
    g = gpus.get(r["uuid"].strip())
    if g is None:
        print(f"BAD {r['uuid']}: missing from corral"); bad += 1; continue
    u = g["uuid"]
    compare(u, "index", r["index"], g["index"], "abs", 0)
    compare(u, "name", r["name"], g["name"], "str")
    compare(u, "serial", r["serial"], g["serial"], "str")
    compare(u, "pci.bus_id", r["pci.bus_id"], g["pci_bus_id"], "str")
    compare(u, "driver_version", r["driver_version"], g["driver_version"], "str")
    compare(u, "vbios_version", r["vbios_version"], g["vbios_version"], "str")
    compare(u, "persistence_mode", r["persistence_mode"], g["persistence_mode"], "bool")
    compare(u, "compute_mode", r["compute_mode"], g["compute_mode"], "compute")
    compare(u, "ecc.mode.current", r["ecc.mode.current"], g["ecc_enabled"], "bool")
    compare(u, "pcie.link.gen.max", r["pcie.link.gen.max"], g["pcie_link_gen_max"], "abs", 0)
    compare(u, "pcie.link.width.max", r["pcie.link.width.max"], g["pcie_link_width_max"], "abs", 0)
    compare(u, "pcie.link.width.current", r["pcie.link.width.current"], g["pcie_link_width"], "abs", 0)
    mt = None if g["memory_total_bytes"] is None else g["memory_total_bytes"] / MIB
    compare(u, "memory.total", r["memory.total"], mt, "abs", 1)
    mu = None if g["memory_used_bytes"] is None else g["memory_used_bytes"] / MIB
    compare(u, "memory.used", r["memory.used"], mu, "rel", 0.05)
    compare(u, "utilization.gpu", r["utilization.gpu"], g["utilization_percent"], "abs", 15)
    compare(u, "temperature.gpu", r["temperature.gpu"], g["temperature_celsius"], "abs", 3)
    compare(u, "power.draw", r["power.draw"], g["power_watts"], "rel", 0.15)
    compare(u, "clocks.sm", r["clocks.sm"], g["sm_clock_mhz"], "rel", 0.15)
    compare(u, "clocks.mem", r["clocks.mem"], g["memory_clock_mhz"], "rel", 0.15)
    compare(u, "ecc.errors.uncorrected.volatile.total", r["ecc.errors.uncorrected.volatile.total"], g["ecc_uncorrected_volatile"], "abs", 0)
    print(f"    {u} health: {g['health']['status']} {[x['message'] for x in g['health']['reasons']]}")

# NVML's recovery action (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, drivers from R565).
ACTIONS = {"none", "reset", "reboot", "drain_p2p", "drain_and_reset"}
for u, g in gpus.items():
    ra = g.get("recovery_action")
    major = int((g.get("driver_version") or "0").split(".")[0] or 0)
    if ra is None:
        note = "expected from driver R565 on data-centre GPUs" if major >= 565 else "driver older than R565"
        print(f"note {u} recovery_action: null ({note}; driver {g.get('driver_version')})")
    elif ra in ACTIONS:
        print(f"ok  {u} recovery_action: {ra} (health action {g['health'].get('action')} from {g['health'].get('action_source')})")
    else:
        print(f"BAD {u} recovery_action: {ra!r} is not an NVML recovery action"); bad += 1

# The kernel-log source: opened, and counting what the kernel log holds.
log = open(sys.argv[3], errors="replace").read()
if "reading XIDs from the kernel log" in log:
    print("ok  kernel log: the agent reads /dev/kmsg")
elif "cannot open" in log:
    line = next(l for l in log.splitlines() if "cannot open" in l)
    if os.geteuid() == 0:
        print(f"BAD kernel log: not readable as root: {line}"); bad += 1
    else:
        print(f"note kernel log: not readable as this user (run as root to check it): {line}")
else:
    print("BAD kernel log: the agent logged neither reading nor a reason"); bad += 1

def short(pci):
    d, b, rest = pci.split(":")
    return f"{d[-4:]}:{b}:{rest.split('.')[0]}".lower()

by_pci = {short(g["pci_bus_id"]): g for g in gpus.values() if g.get("pci_bus_id")}
logged = {}
for line in open(sys.argv[4], errors="replace"):
    m = re.search(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F:.]+)\): (\d+)", line)
    if m:
        codes = logged.setdefault(short(m.group(1)), {})
        codes[int(m.group(2))] = codes.get(int(m.group(2)), 0) + 1
if os.path.getsize(sys.argv[4]) == 0:
    print("note kernel log: dmesg shows no NVRM XID lines (or is not readable); nothing to compare")
for pci, codes in sorted(logged.items()):
    g = by_pci.get(pci)
    if g is None:
        print(f"note kernel log: XIDs for {pci}, which no GPU listed here has: {codes}")
        continue
    ours = {c["xid"]: c["count"] for c in g["health"].get("xid_counts", [])}
    # NVML may have delivered some as events too; merged ones count once, so corral has
    # at least what the kernel log has.
    ok = all(ours.get(x, 0) >= n for x, n in codes.items())
    print(f"{'ok ' if ok else 'BAD'} {g['uuid']} kernel-log XIDs {codes}, corral counts {ours}")
    if not ok:
        bad += 1

inject = os.environ.get("INJECT")
if inject:
    after = {g["uuid"]: g for g in json.load(open(sys.argv[5]))["gpus"] if g.get("parent_uuid") is None}
    g = next(g for g in after.values() if g.get("pci_bus_id") and short(g["pci_bus_id"]) == inject)
    before = {c["xid"]: c["count"] for c in gpus[g["uuid"]]["health"].get("xid_counts", [])}
    now = {c["xid"]: c["count"] for c in g["health"].get("xid_counts", [])}
    ok = now.get(13, 0) == before.get(13, 0) + 1 and g["health"]["status"] == gpus[g["uuid"]]["health"]["status"]
    print(f"{'ok ' if ok else 'BAD'} {g['uuid']} injected XID 13 at {inject}: counted {before.get(13, 0)} -> {now.get(13, 0)}, health {g['health']['status']}")
    if not ok:
        bad += 1

print(f"{bad} mismatch(es)")
sys.exit(1 if bad else 0)
PY
