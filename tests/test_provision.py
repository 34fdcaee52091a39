"""testkit.provision: the browser's steps in order, each outcome, against a fake machine. Nothing is installed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from testkit import provision
from testkit.provision import BROWSER, ProvisionError, Requirement, Step, resolve

DEBIAN = {"ID": "debian", "VERSION_ID": "12"}
UBUNTU_DERIVATIVE = {"ID": "linuxmint", "ID_LIKE": "ubuntu debian"}
FEDORA = {"ID": "fedora"}
PW_CHROME = "/home/u/.cache/ms-playwright/chromium-1255/chrome-linux64/chrome"


@dataclass
class FakeMachine:
    """A machine made of dictionaries. ``on_run`` maps a command's words to its exit code and its effect."""

    environ: dict[str, str] = field(default_factory=dict)
    path: dict[str, str] = field(default_factory=dict)  # name on PATH -> absolute path
    files: dict[str, str | None] = field(default_factory=dict)  # executable -> its --version line (None: broken)
    root: bool = False
    release: dict[str, str] = field(default_factory=dict)
    playwright_home: str | None = PW_CHROME
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


def find(machine: FakeMachine, *, install: bool = True) -> tuple[str, list[str]]:
    lines: list[str] = []
    path = resolve(BROWSER, machine, install=install, log=lines.append)
    return path, lines


def fail(machine: FakeMachine, *, install: bool = True) -> tuple[str, list[str]]:
    lines: list[str] = []
    with pytest.raises(ProvisionError) as caught:
        resolve(BROWSER, machine, install=install, log=lines.append)
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
