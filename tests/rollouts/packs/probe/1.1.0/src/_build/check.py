"""Build step of the probe pack: fails the build of a site whose flavor is cursed."""

from pathlib import Path

flavor = Path("/site/flavor.txt")
if flavor.read_text().strip() == "cursed":
    raise SystemExit("this site's flavor is cursed: refusing to build")
flavor.unlink()
