"""S7: 1,000 sites × (zone + 4 records) into a local PowerDNS, then every answer checked
by querying the server directly; then a no-op re-sync of the same zones. Baseline: octoDNS
(``octodns-sync`` with the ``octodns-powerdns`` provider, from its own virtualenv made by
bench/bootstrap.sh) syncing the same records for as many zones to the same PowerDNS in the
same run (its zones have their own names so the two never see each other's work).

Ours is the DNS service's provider path without the database: one ``zone_versions`` call,
then per zone either ``create_zone_with`` (a new zone with its records: one POST) or
``get_zone`` (skipped when its serial is the one we last saw), ``compute_plan``, and one
PATCH when something differs. One zone at a time: concurrent reads are slower on the
sqlite3 backend (about 25 ms each with 16 at once vs 6 ms one by one on this machine)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rdatatype
import httpx

from bench.report import Row, verdict
from bench.stack import Stack
from cli.devstack import procs
from cli.devstack.pdns import start_pdns
from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import compute_plan
from services.dns.records import RRset, make_rrset
from shared.settings import PROJECT_ROOT

OCTODNS_SYNC = PROJECT_ROOT / ".venv-octodns" / "bin" / "octodns-sync"
TTL = 300
EDGE = "edge.cdn.example.net."
NS = ["ns1.example.net."]


def desired(zone: str, n: int) -> list[RRset]:
    """The 4 records of a site (DESIGN.md §5); the apex ALIAS target lies outside our
    zones so checks compare what is stored, not a resolution."""
    return [
        make_rrset(f"proxy.{zone}", "A", TTL, [f"198.18.{n // 250}.{n % 250 + 1}"]),
        make_rrset(zone, "ALIAS", TTL, [f"s{n}.{EDGE}"]),
        make_rrset(f"www.{zone}", "CNAME", TTL, [f"s{n}.{EDGE}"]),
        make_rrset(f"media.{zone}", "CNAME", TTL, [f"s{n}.media.cdn.example.net."]),
    ]


async def sync_ours(client: PowerDnsClient, zones: list[str]) -> tuple[int, int]:
    """(zones changed, errors): what the service does per zone, over every zone."""
    changed = errors = 0
    versions = await client.zone_versions()  # one call: which zones exist, at what serial
    for n, zone in enumerate(zones):
        try:
            if zone not in versions:
                plan = compute_plan(zone, desired(zone, n), {}, "b")
                await client.create_zone_with(zone, plan.changes("b"), nameservers=NS)
                changed += 1
                continue
            current = await client.get_zone(zone, version=versions[zone])
            plan = compute_plan(zone, desired(zone, n), current.rrsets if current else {}, "b")
            if not plan.is_empty:
                await client.patch_rrsets(zone, plan.changes("b"))
                changed += 1
        except Exception:
            errors += 1
    return changed, errors


def octodns_config(root: Path, zones: list[str], api_port: int, api_key: str) -> Path:
    config_dir = root / "zones"
    config_dir.mkdir()
    for n, zone in enumerate(zones):
        edge = f"s{n}.{EDGE}"
        (config_dir / f"{zone}yaml").write_text(
            "---\n"
            f"'':\n  ttl: {TTL}\n  type: ALIAS\n  value: {edge}\n"
            f"media:\n  ttl: {TTL}\n  type: CNAME\n  value: s{n}.media.cdn.example.net.\n"
            f"proxy:\n  ttl: {TTL}\n  type: A\n  value: 198.18.{n // 250}.{n % 250 + 1}\n"
            f"www:\n  ttl: {TTL}\n  type: CNAME\n  value: {edge}\n"
        )
    config = root / "octodns.yaml"
    config.write_text(
        "---\n"
        "providers:\n"
        f"  config:\n    class: octodns.provider.yaml.YamlProvider\n    directory: {config_dir}\n"
        "  pdns:\n    class: octodns_powerdns.PowerDnsProvider\n    host: 127.0.0.1\n"
        f"    port: {api_port}\n    api_key: env/BENCH_PDNS_KEY\n"
        "zones:\n"
        + "".join(f"  {zone}:\n    sources: [config]\n    targets: [pdns]\n" for zone in zones)
    )
    return config


def run_octodns(config: Path, api_key: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [str(OCTODNS_SYNC), f"--config-file={config}", "--doit", "--force", "--quiet"],
        env={**os.environ, "BENCH_PDNS_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"octodns-sync failed: {done.stderr[-800:]}")
    return time.perf_counter() - started


async def check_answers(port: int, zones: list[str]) -> int:
    """Wrong or missing answers over every record of every zone (no recursion)."""
    gate = asyncio.Semaphore(32)

    async def ask(name: str, rtype: str) -> set[str]:
        query = dns.message.make_query(name, rtype)
        query.flags &= ~dns.flags.RD
        async with gate:
            response = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=3)
        wanted = dns.rdatatype.from_text(rtype)
        return {r.to_text().lower() for a in response.answer if a.rdtype == wanted for r in a}

    async def zone_errors(n: int, zone: str) -> int:
        wrong = 0
        for rrset in desired(zone, n):
            if rrset.type == "ALIAS":
                continue  # answered by expanding it: its target is not ours to serve
            try:
                if await ask(rrset.name, rrset.type) != set(rrset.contents):
                    wrong += 1
            except Exception:
                wrong += 1
        return wrong

    return sum(await asyncio.gather(*(zone_errors(n, z) for n, z in enumerate(zones))))


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    count = 200 if quick else 1_000
    state = stack.tempdir("s7-pdns")
    dns_port, api_port, api_key = procs.free_port(), procs.free_port(), secrets.token_hex(16)
    proc = start_pdns(state, dns_port=dns_port, api_port=api_port, api_key=api_key)
    try:
        ours_zones = [f"s{n}.ours.bench." for n in range(count)]
        octo_zones = [f"s{n}.octo.bench." for n in range(count)]
        async with httpx.AsyncClient() as http:
            client = PowerDnsClient(http, api_url=f"http://127.0.0.1:{api_port}", api_key=api_key)
            t0 = time.perf_counter()
            changed, errors = await sync_ours(client, ours_zones)
            ours_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            rechanged, reerrors = await sync_ours(client, ours_zones)
            ours_noop = time.perf_counter() - t0
            # A fresh process has no serials cached: it reads every zone once.
            fresh = PowerDnsClient(http, api_url=f"http://127.0.0.1:{api_port}", api_key=api_key)
            t0 = time.perf_counter()
            cold_changed, cold_errors = await sync_ours(fresh, ours_zones)
            ours_cold = time.perf_counter() - t0
            rechanged += cold_changed
            reerrors += cold_errors
        ours_wrong = await check_answers(dns_port, ours_zones)

        config = octodns_config(stack.tempdir("s7-octodns"), octo_zones, api_port, api_key)
        octo_first = run_octodns(config, api_key)
        octo_noop = run_octodns(config, api_key)
        octo_wrong = await check_answers(dns_port, octo_zones)
    finally:
        procs.stop(proc)

    ours_rate, octo_rate = count / ours_first, count / octo_first
    problems = errors + reerrors + ours_wrong + rechanged + (count - changed)
    scale = 1_000 / count  # the target is for 1,000 zones
    return [
        Row(
            f"S7 DNS: {count:,} zones × 4 records into PowerDNS, then checked",
            f"{ours_rate:.0f} zones/s; no-op re-sync {ours_noop:.2f} s "
            f"({ours_cold:.2f} s from a fresh process); "
            f"{errors + reerrors} errors, {ours_wrong} wrong answers",
            f"octoDNS {octo_rate:.1f} zones/s; no-op {octo_noop:.1f} s; {octo_wrong} wrong answers",
            f"{ours_rate / octo_rate:.1f}× faster; re-sync {octo_noop / ours_noop:.0f}×",
            "0 errors; ≥ 300 zones/s; re-sync of 1,000 ≤ 2 s; vs octoDNS",
            verdict(
                zero_errors=problems == 0,
                zones_per_s=ours_rate >= 300,
                resync=ours_noop * scale <= 2.0,
            ),
            notes=[
                "ours = the DNS service's PowerDNS provider path (one zone listing, then a "
                "new zone created with its records in one POST, or read only if its serial "
                "moved, diffed, one PATCH if needed) without the database rows and without "
                "the service's own verification; both sides' answers then checked by "
                "direct queries (ALIAS skipped: its target is not served here). The no-op "
                "re-sync of the running service skips zones whose SOA serial has not moved "
                "(one listing call); a fresh process reads every zone once. zones/s is "
                "bound by PowerDNS's write per new zone on the sqlite3 backend",
                f"octoDNS {_octodns_version()} with octodns-powerdns, `octodns-sync "
                "--doit` over a YamlProvider directory, zones named apart from ours on the "
                "same PowerDNS (sqlite3 backend) in the same run"
                + (
                    "; quick mode: 200 zones, re-sync scaled ×5 for the 1,000-zone target"
                    if quick
                    else ""
                ),
            ],
        )
    ]


def _octodns_version() -> str:
    pip = OCTODNS_SYNC.parent / "pip"
    try:
        out = subprocess.run(
            [str(pip), "show", "octodns"], capture_output=True, text=True, timeout=30
        ).stdout
    except OSError:
        return "(absent)"
    return next((ln.split()[-1] for ln in out.splitlines() if ln.startswith("Version")), "?")
