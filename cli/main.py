"""The ``sitefleet`` ops CLI. It sits above the services (it may import them; nothing
imports it)."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import identity
from shared.db import create_engine, create_sessionmaker
from shared.errors import SitefleetError
from shared.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="Operate a Sitefleet installation.")
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants (customers of the platform).")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
dev_app = typer.Typer(no_args_is_help=True, help="The local development platform.")
jobs_app = typer.Typer(no_args_is_help=True, help="Parked jobs: list and replay.")
dns_app = typer.Typer(no_args_is_help=True, help="DNS records of the sites.")
broker_app = typer.Typer(no_args_is_help=True, help="The RabbitMQ topology.")
templates_app = typer.Typer(no_args_is_help=True, help="Template packs: validate and list.")
host_app = typer.Typer(no_args_is_help=True, help="Web hosts: bootstrap, add, list, remove.")
sites_app = typer.Typer(no_args_is_help=True, help="Sites in bulk.")
domain_app = typer.Typer(no_args_is_help=True, help="Domains: list, check at the registrar.")
certs_app = typer.Typer(no_args_is_help=True, help="TLS certificates: list, renew now.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")
app.add_typer(jobs_app, name="jobs")
app.add_typer(dns_app, name="dns")
app.add_typer(broker_app, name="broker")
app.add_typer(templates_app, name="templates")
app.add_typer(host_app, name="host")
app.add_typer(sites_app, name="sites")
app.add_typer(domain_app, name="domain")
app.add_typer(certs_app, name="certs")

T = TypeVar("T")


def _in_transaction(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(
            CommonSettings().database_url, application_name="sitefleet-cli", pool_size=1
        )
        try:
            async with create_sessionmaker(engine).begin() as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


@tenant_app.command("create")
def tenant_create(name: Annotated[str, typer.Argument(help="tenant name")]) -> None:
    """Create a tenant and print its first API token (shown once)."""

    async def work(session: AsyncSession) -> str:
        tenant = await identity.create_tenant(session, name)
        _, secret = await identity.create_token(session, tenant.id, "initial")
        return f"tenant {tenant.id} ({name})\ntoken {secret}"

    typer.echo(_in_transaction(work))


@token_app.command("create")
def token_create(
    tenant: Annotated[str | None, typer.Option(help="tenant name")] = None,
    ops: Annotated[bool, typer.Option("--ops", help="an ops token (reads every tenant)")] = False,
    name: Annotated[str, typer.Option(help="a label for the token")] = "cli",
) -> None:
    """Create an API token for a tenant, or an ops token, and print it (shown once)."""
    if ops == (tenant is not None):
        typer.echo("error: give exactly one of --tenant NAME or --ops", err=True)
        raise typer.Exit(2)

    async def work(session: AsyncSession) -> str:
        if ops:
            _, secret = await identity.create_ops_token(session, name)
            return secret
        found = await identity.get_tenant_by_name(session, tenant or "")
        if found is None:
            raise SitefleetError(f"no tenant named {tenant!r}")
        _, secret = await identity.create_token(session, found.id, name)
        return secret

    typer.echo(_in_transaction(work))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending schema migration."""
    from shared.migrate import upgrade  # alembic: only this command needs it

    upgrade(CommonSettings().database_url)


@jobs_app.command("parked")
def jobs_parked(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """List the jobs that gave up (retries exhausted or a permanent error)."""
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from cli.jobs import list_parked

    parked = asyncio.run(list_parked(CommonSettings().broker_urls[0]))
    if as_json:
        for job in parked:
            typer.echo(json.dumps(dataclasses.asdict(job)))
        return
    table = Table(title=f"{len(parked)} parked job(s)")
    for column in ("id", "queue", "job", "error", "message"):
        table.add_column(column, overflow="fold")
    for job in parked:
        table.add_row(job.message_id, job.queue, job.routing_key, job.error_code, job.error_message)
    Console(soft_wrap=True).print(table)


@jobs_app.command("replay")
def jobs_replay(message_id: Annotated[str, typer.Argument(help="the parked job's id")]) -> None:
    """Send a parked job back to its queue (its retries start again)."""
    from cli.jobs import replay

    try:
        job = asyncio.run(replay(CommonSettings().broker_urls[0], message_id))
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"replayed {job.message_id} ({job.routing_key}) from {job.queue}")


@dns_app.command("plan")
def dns_plan(domain: Annotated[str, typer.Argument(help="the site's domain")]) -> None:
    """Print (as JSON) what reconciling the site's DNS would change; changes nothing."""
    import json

    from cli.dns import plan
    from services.dns.settings import DnsSettings

    try:
        result = asyncio.run(plan(DnsSettings(), domain))
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, indent=2))


@dns_app.command("sync")
def dns_sync(
    domain: Annotated[str | None, typer.Argument(help="one site's domain (default: all)")] = None,
) -> None:
    """Queue a DNS reconcile (apply + verify) for one site or for every site."""
    from contextlib import ExitStack

    from cli.dns import sync
    from cli.progress import progress_bar
    from services.dns.settings import DnsSettings

    try:
        with ExitStack() as stack:
            steps: list[Callable[[str | None], None]] = []

            def start(total: int) -> None:
                steps.append(stack.enter_context(progress_bar("queueing DNS reconciles", total)))

            domains = asyncio.run(
                sync(DnsSettings(), domain, on_total=start, on_site=lambda d: steps[0](d))
            )
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"queued a DNS reconcile for {len(domains)} site(s)")


@sites_app.command("redeploy")
def sites_redeploy(
    all_sites: Annotated[bool, typer.Option("--all", help="every site")] = False,
    template: Annotated[str | None, typer.Option(help="every site of this template")] = None,
) -> None:
    """Request a new deployment for every site, or every site of one template (through
    the outbox, like the API's own deployments; the API process publishes them)."""
    from contextlib import ExitStack

    from cli.progress import progress_bar
    from cli.redeploy import redeploy

    if all_sites == (template is not None):
        typer.echo("error: give exactly one of --all or --template NAME", err=True)
        raise typer.Exit(2)
    with ExitStack() as stack:
        steps: list[Callable[[str | None], None]] = []

        def start(total: int) -> None:
            steps.append(stack.enter_context(progress_bar("redeploying", total)))

        try:
            requested = asyncio.run(
                redeploy(
                    CommonSettings(),
                    template=template,
                    on_total=start,
                    on_site=lambda domain: steps[0](domain),
                )
            )
        except SitefleetError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"requested {len(requested)} deployment(s)")


@broker_app.command("definitions")
def broker_definitions(vhost: Annotated[str, typer.Option(help="the vhost")] = "/") -> None:
    """Print the topology as RabbitMQ definitions JSON (rabbitmqctl import_definitions)."""
    import json

    from cli.definitions import topology_definitions

    settings = CommonSettings()
    typer.echo(
        json.dumps(
            topology_definitions(settings.retry_delays, settings.delivery_limit, vhost), indent=2
        )
    )


@templates_app.command("validate")
def templates_validate(
    path: Annotated[Path, typer.Argument(help="the pack's directory (templates/NAME/VERSION)")],
    domain: Annotated[str, typer.Option(help="the domain to render for")] = "",
) -> None:
    """Check a pack end to end: schema, preview params and examples, render, build in the
    sandbox, output, HTML and internal links. Exits 1 when anything is wrong."""
    from cli.templates import PREVIEW_DOMAIN, validate_pack
    from services.deployer.settings import DeployerSettings

    report = asyncio.run(
        validate_pack(path.resolve(), DeployerSettings(), domain=domain or PREVIEW_DOMAIN)
    )
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


@templates_app.command("publish")
def templates_publish(
    path: Annotated[Path, typer.Argument(help="the pack's directory (.../NAME/VERSION)")],
) -> None:
    """Validate a pack (as `templates validate`), then publish it: record its content hash
    and install it in the templates directory as NAME/VERSION. A published version is
    immutable: a different pack under it is refused. Exits 1 when nothing was published."""
    from cli.template_publish import publish
    from services.deployer.settings import DeployerSettings

    settings = DeployerSettings()

    async def work(session: AsyncSession) -> Any:
        return await publish(session, path.resolve(), settings.templates_dir, settings)

    result = _in_transaction(work)
    for line in result.report.lines():
        typer.echo(line)
    if result.pack is None:
        typer.echo("not published", err=True)
        raise typer.Exit(1)
    state = "published" if result.new else "already published (same content)"
    typer.echo(
        f"{state}: {result.pack.name} {result.pack.version} "
        f"sha256 {result.pack.content_hash} at {result.installed_at}"
    )


@templates_app.command("list")
def templates_list() -> None:
    """List the template packs (name and versions) of the templates directory."""
    from cli.templates import list_packs

    try:
        packs = list_packs(CommonSettings().templates_dir)
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    for name, versions in packs.items():
        typer.echo(f"{name}  {', '.join(versions)}")


@host_app.command("add")
def host_add(
    name: Annotated[str, typer.Argument(help="the host's name (a-z, 0-9, -)")],
    ssh: Annotated[
        str | None, typer.Option(help="user@address[:port]; without it: a local host")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="the private key to log in with")] = None,
    sites_root: Annotated[str | None, typer.Option(help="the sites root on the host")] = None,
    objects_root: Annotated[
        str | None, typer.Option(help="the object store on the host (default: in sites root)")
    ] = None,
    http: Annotated[
        str | None, typer.Option(help="address:port of the host's nginx, for health checks")
    ] = None,
    public_address: Annotated[
        list[str] | None, typer.Option(help="an address published in DNS (repeatable)")
    ] = None,
    nginx_command: Annotated[
        str | None,
        typer.Option(
            help="how to run the host's nginx, e.g. 'sudo -n /usr/sbin/nginx' (-t and "
            "-s reload are appended); needed for templates with nginx rules (spa)"
        ),
    ] = None,
    nginx_listen: Annotated[
        str | None,
        typer.Option(help="the catch-all server's listen, e.g. 80 (default: the --http address)"),
    ] = None,
    https_port: Annotated[
        int | None,
        typer.Option(
            help="the port of its nginx's TLS listener at the --http address "
            "(default: SITEFLEET_HTTPS_PORT)"
        ),
    ] = None,
) -> None:
    """Register a web host. An SSH host's key is fetched now and pinned; a host that does
    not answer (or refuses the key) is not added."""
    from cli.hosts import add, describe
    from services.deployer.settings import DeployerSettings

    if key is not None:
        key = key.resolve()
        if not key.is_file():
            typer.echo(f"error: no key file at {key}", err=True)
            raise typer.Exit(1)
    try:
        host = asyncio.run(
            add(
                DeployerSettings(),
                name,
                ssh=ssh,
                key=key,
                sites_root=sites_root,
                objects_root=objects_root,
                http=http,
                public_addresses=public_address or [],
                nginx_command=shlex.split(nginx_command) if nginx_command else None,
                nginx_listen=nginx_listen,
                https_port=https_port,
            )
        )
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"host {host.id} {host.name} ({describe(host)}) added")
    if host.host_key:
        typer.echo(f"pinned host key: {host.host_key}")


@host_app.command("bootstrap")
def host_bootstrap(
    target: Annotated[
        str, typer.Argument(help="user@address[:port]: root, or an account that may sudo -n")
    ],
    key: Annotated[Path, typer.Option(help="the private key that logs in as that account")],
    name: Annotated[
        str | None, typer.Option(help="the host's name (default: from address)")
    ] = None,
    deploy_user: Annotated[str, typer.Option(help="the unprivileged deploy user")] = "sitefleet",
    deploy_key: Annotated[
        Path | None, typer.Option(help="the deployer's private key (default: --key)")
    ] = None,
    deploy_home: Annotated[
        str | None, typer.Option(help="the deploy user's home (default: /home/USER)")
    ] = None,
    sites_root: Annotated[
        str | None, typer.Option(help="the sites root (default: SITEFLEET_SSH_SITES_ROOT)")
    ] = None,
    objects_root: Annotated[
        str | None, typer.Option(help="the object store (default: SITES_ROOT/.objects)")
    ] = None,
    listen: Annotated[str, typer.Option(help="nginx's listen: port, or address:port")] = "80",
    https_listen: Annotated[
        str, typer.Option(help="nginx's TLS listen: port, or address:port")
    ] = "443",
    hsts_max_age: Annotated[
        int | None,
        typer.Option(help="HSTS max-age in seconds, 0: off (default: SITEFLEET_HSTS_MAX_AGE)"),
    ] = None,
    nginx_group: Annotated[
        str, typer.Option(help="the group nginx's workers run as (may read the keys)")
    ] = "www-data",
    http: Annotated[
        str | None,
        typer.Option(help="address:port to check nginx at (default: address:listen port)"),
    ] = None,
    public_address: Annotated[
        list[str] | None, typer.Option(help="an address published in DNS (repeatable)")
    ] = None,
    nginx_conf: Annotated[
        str, typer.Option(help="where the catch-all config goes")
    ] = "/etc/nginx/conf.d/sitefleet.conf",
    nginx_default_site: Annotated[
        str, typer.Option(help="the stock site to disable (a symlink)")
    ] = "/etc/nginx/sites-enabled/default",
    nginx_command: Annotated[
        str, typer.Option(help="how to run nginx on the host (e.g. 'nginx -c FILE')")
    ] = "nginx",
    rules_nginx_command: Annotated[
        str | None,
        typer.Option(
            help="how the deployer runs nginx as the deploy user, for templates with nginx "
            "rules (e.g. 'sudo -n /usr/sbin/nginx', with a sudoers rule; docs/operations.md)"
        ),
    ] = None,
) -> None:
    """Prepare a fresh Debian/Ubuntu web host over SSH (nginx, a deploy user, the layout,
    the catch-all config), check it serves, and register it. A second run changes nothing."""
    import shlex

    from cli.progress import progress_bar
    from cli.provision import STEPS, Plan, StepResult, bootstrap, default_name
    from services.deployer import hosts
    from services.deployer.settings import DeployerSettings

    settings = DeployerSettings()
    try:
        admin = hosts.parse_ssh(target)
        plan = Plan(
            admin=admin,
            admin_key=key.resolve(),
            deploy_key=(deploy_key or key).resolve(),
            name=name or default_name(admin.address),
            # Default: the SSH address, on the port nginx is told to listen on.
            http=hosts.parse_http(http or f"{admin.address}:{listen.rsplit(':', 1)[-1]}"),
            public_addresses=public_address or [admin.address],
            deploy_user=deploy_user,
            deploy_home=deploy_home,
            sites_root=sites_root or settings.ssh_sites_root,
            objects_root=objects_root or settings.ssh_objects_root,
            listen=listen,
            https_listen=https_listen,
            hsts_max_age=settings.hsts_max_age if hsts_max_age is None else hsts_max_age,
            nginx_group=nginx_group,
            nginx_conf=nginx_conf,
            nginx_default_site=nginx_default_site,
            nginx_command=tuple(shlex.split(nginx_command)),
            rules_nginx_command=(
                tuple(shlex.split(rules_nginx_command)) if rules_nginx_command else None
            ),
        )
        with progress_bar(f"bootstrapping {plan.name}", len(STEPS)) as step:

            def report(result: StepResult) -> None:
                mark = "changed" if result.changed else "ok     "
                typer.echo(f"{mark}  {result.step}: {result.detail}")
                step(result.step)

            outcome = asyncio.run(bootstrap(plan, settings, report))
    except (SitefleetError, ValueError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(1) from None
    if outcome.changed:
        typer.echo(f"{len(outcome.changed)} step(s) changed the host; web host {plan.name} ready")
    else:
        typer.echo(f"nothing changed: web host {plan.name} was already bootstrapped")


@host_app.command("list")
def host_list() -> None:
    """List the web hosts and how many sites each holds."""
    from cli.hosts import describe, list_all
    from services.deployer.settings import DeployerSettings

    for host, sites in asyncio.run(list_all(DeployerSettings())):
        state = "enabled" if host.enabled else "disabled"
        typer.echo(
            f"{host.name}  {describe(host)}  sites_root={host.sites_root}  "
            f"http={host.http_host}:{host.http_port}  {sites} site(s)  {state}"
        )


@host_app.command("remove")
def host_remove(name: Annotated[str, typer.Argument(help="the host's name")]) -> None:
    """Remove a web host that holds no site."""
    from cli.hosts import remove
    from services.deployer.settings import DeployerSettings

    try:
        asyncio.run(remove(DeployerSettings(), name))
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"host {name} removed")


@domain_app.command("list")
def domain_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's (by name)")] = None,
) -> None:
    """Every tenant's domains: status, registrar, purchase order (status x attempts),
    expiry and why the last registration or verification failed."""
    from cli.domains import list_domains
    from services.dns.settings import DnsSettings

    for line in asyncio.run(list_domains(DnsSettings(), tenant)):
        failure = f"  failure: {line.failure}" if line.failure else ""
        typer.echo(
            f"{line.name}  tenant={line.tenant}  {line.status}  registrar={line.registrar}  "
            f"order={line.order}  expires={line.expires_at}{failure}"
        )


@domain_app.command("check")
def domain_check(name: Annotated[str, typer.Argument(help="a domain name")]) -> None:
    """Ask the configured registrar whether NAME is available and at what price (JSON)."""
    import json

    from cli.domains import check_name
    from services.dns.settings import DnsSettings

    try:
        typer.echo(json.dumps(asyncio.run(check_name(DnsSettings(), name)), indent=2))
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


@app.command("backup")
def backup(
    dest_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="DEST_DIR",
            help="where to write it (created if missing): a new sitefleet-backup-<UTC time>/",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="the backup directory's own path")
    ] = None,
    parallel: Annotated[int, typer.Option(min=1, help="web hosts read at once")] = 4,
) -> None:
    """Back up the database (pg_dump) and every web host's release state (objects,
    releases, current links, nginx rules) into one directory with a manifest of sizes and
    checksums. Exits 1 if anything could not be backed up (docs/operations.md)."""
    from contextlib import ExitStack
    from datetime import UTC, datetime

    from cli.backup import default_path, describe_backup, make_backup
    from cli.progress import progress_bar
    from services.deployer.settings import DeployerSettings

    if (dest_dir is None) == (output is None):
        typer.echo("error: give exactly one of DEST_DIR or --output PATH", err=True)
        raise typer.Exit(2)
    if dest_dir is not None:
        dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = (output or default_path(dest_dir or Path("."), datetime.now(UTC))).resolve()
    if not dest.parent.is_dir():
        typer.echo(f"error: {dest.parent} is not a directory", err=True)
        raise typer.Exit(1)
    try:
        with ExitStack() as stack:
            steps: list[Callable[[str | None], None]] = []

            def start(total: int) -> None:
                steps.append(stack.enter_context(progress_bar("backing up", total)))

            result = asyncio.run(
                make_backup(
                    DeployerSettings(),
                    dest,
                    on_total=start,
                    on_step=lambda s: steps[0](s),
                    parallel=parallel,
                )
            )
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    summary, complaints = describe_backup(result)
    typer.echo(summary)
    for line in complaints:
        typer.echo(line, err=True)
    if result.failed_hosts:
        raise typer.Exit(1)


@app.command("restore")
def restore(
    backup_path: Annotated[
        Path, typer.Argument(metavar="BACKUP", help="a backup directory (or its manifest.json)")
    ],
    hosts_only: Annotated[
        bool, typer.Option("--hosts-only", help="only the web hosts' release state")
    ] = False,
    db_only: Annotated[bool, typer.Option("--db-only", help="only the database")] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "--force",
            "-y",
            help="replace a database that is not empty, and switch sites a host serves "
            "differently to the release the database calls live",
        ),
    ] = False,
    check: Annotated[
        bool, typer.Option(help="check each restored site through its host's nginx")
    ] = True,
) -> None:
    """Restore a backup: the database (into an empty one unless --yes; migrated to this
    version's schema), then every web host's releases, so each site serves its live release
    again without a rebuild. Refuses a damaged backup before touching anything. Stop the
    Sitefleet services before restoring the database (docs/operations.md)."""
    from cli.progress import progress_bar
    from cli.restore import (
        RestoreReport,
        describe_host,
        load_manifest,
        restore_database,
        restore_hosts,
        verify_files,
    )
    from services.deployer.settings import DeployerSettings

    if hosts_only and db_only:
        typer.echo("error: give at most one of --hosts-only and --db-only", err=True)
        raise typer.Exit(2)
    settings = DeployerSettings()
    report = RestoreReport()
    try:
        root, manifest = load_manifest(backup_path.resolve())
        verify_files(root, manifest, database=not hosts_only, hosts=not db_only)
        hosts = [h for h in manifest["hosts"] if h.get("status") == "ok"] if not db_only else []
        with progress_bar("restoring", int(not hosts_only) + len(hosts)) as step:

            async def work() -> None:
                if not hosts_only:
                    report.database = await restore_database(
                        settings, root, manifest, replace=yes, on_step=step
                    )
                if not db_only:
                    await restore_hosts(
                        settings, root, manifest, report, force=yes, check=check, on_step=step
                    )

            asyncio.run(work())
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    if report.database:
        typer.echo(f"database: {report.database}")
    for name, done in report.hosts.items():
        typer.echo(describe_host(name, done))
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for problem in report.problems:
        typer.echo(f"error: {problem}", err=True)
    if report.problems:
        raise typer.Exit(1)
    typer.echo("restore complete; start the services (the DNS service's sweep re-syncs DNS)")


@app.command("status")
def status(
    api_url: Annotated[str, typer.Option(help="the API's base URL")] = "http://127.0.0.1:8000",
    stuck_after: Annotated[float, typer.Option(help="seconds before work counts as stuck")] = 600,
) -> None:
    """Services, queues, parked jobs, stuck deployments and unverified DNS on one screen.
    Exits 1 when something needs attention (for cron and CI)."""
    from datetime import timedelta

    from rich.console import Console
    from rich.table import Table

    from cli.status import collect

    found = asyncio.run(collect(CommonSettings(), api_url, timedelta(seconds=stuck_after)))
    console = Console(soft_wrap=True)
    console.print(f"API: {found.api}")
    queues = Table(title="Queues")
    for column in ("queue", "messages", "consumers"):
        queues.add_column(column)
    for q in found.queues:
        queues.add_row(q.name, str(q.messages), str(q.consumers))
    console.print(queues)
    if found.stuck_deployments:
        stuck = Table(title="Stuck deployments")
        for column in ("deployment", "status", "created"):
            stuck.add_column(column)
        for row in found.stuck_deployments:
            stuck.add_row(*row)
        console.print(stuck)
    if found.unverified_dns:
        dns = Table(title="DNS records not verified")
        for column in ("name", "type", "status", "error"):
            dns.add_column(column, overflow="fold")
        for record in found.unverified_dns:
            dns.add_row(*record)
        console.print(dns)
    if found.problems:
        console.print("[bold red]Needs attention:[/]")
        for problem in found.problems:
            console.print(f"  - {problem}")
        raise typer.Exit(1)
    console.print("[bold green]All good.[/]")


@dev_app.command("run")
def dev_run() -> None:
    """Start the whole platform locally with a demo site (what `make run` does)."""
    from cli.devstack.run import run

    raise typer.Exit(run())


@certs_app.command("list")
def certs_list(
    domain: Annotated[str | None, typer.Option(help="only this site's")] = None,
) -> None:
    """Each site's certificate (or the order on its way / the last failed one)."""
    from rich.console import Console
    from rich.table import Table

    from cli.certs import list_certificates

    lines = asyncio.run(list_certificates(CommonSettings(), domain))
    table = Table(title=f"{len(lines)} certificate(s)")
    for column in ("domain", "status", "expires", "issuer", "attempts", "error", "next attempt"):
        table.add_column(column, overflow="fold")
    for line in lines:
        table.add_row(
            line.domain,
            line.status,
            line.not_after.isoformat() if line.not_after else "",
            line.issuer or "",
            str(line.attempts),
            line.error or "",
            line.next_attempt_at.isoformat() if line.next_attempt_at else "",
        )
    Console(soft_wrap=True).print(table)


@certs_app.command("renew")
def certs_renew(domain: Annotated[str, typer.Argument(help="the site's domain")]) -> None:
    """Order a new certificate for the site now, even if its certificate is valid and not
    due or its last order failed recently (the CA's rate limits still apply)."""
    from cli.certs import request_renewal

    try:
        site_id = asyncio.run(request_renewal(CommonSettings(), domain))
    except SitefleetError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"certificate requested for {domain} ({site_id}); see `sitefleet certs list`")
