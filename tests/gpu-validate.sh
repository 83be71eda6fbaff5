#!/usr/bin/env bash
# Compares `corral agent --once` with nvidia-smi, field by field, on a machine with
# NVIDIA GPUs. Usage: tests/gpu-validate.sh [path/to/corral]
# Exit status: 0 all fields agree, 1 a mismatch, 2 cannot run (no nvidia-smi, no python3).
set -euo pipefail
CORRAL=${1:-target/release/corral}
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: run this on a GPU machine" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }
[ -x "$CORRAL" ] || { echo "$CORRAL is not executable; build with cargo build --release" >&2; exit 2; }

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
FIELDS=index,uuid,name,serial,pci.bus_id,driver_version,vbios_version,persistence_mode,compute_mode,ecc.mode.current,pcie.link.gen.max,pcie.link.width.max,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,clocks.sm,clocks.mem,pcie.link.width.current,ecc.errors.uncorrected.volatile.total
"$CORRAL" agent --once > "$tmp/corral.json"
nvidia-smi --query-gpu="$FIELDS" --format=csv,noheader,nounits > "$tmp/smi.csv"

start=$(date +%s%N)
for _ in $(seq 20); do "$CORRAL" agent --once > /dev/null; done
end=$(date +%s%N)
echo "20 x corral agent --once: $(( (end - start) / 20000000 )) ms each (includes a 200 ms CPU-usage wait)"

FIELDS="$FIELDS" python3 - "$tmp/corral.json" "$tmp/smi.csv" <<'PY'
import csv, json, os, sys
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
print(f"{bad} mismatch(es)")
sys.exit(1 if bad else 0)
PY
