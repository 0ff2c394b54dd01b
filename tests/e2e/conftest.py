"""End-to-end fixtures: a real registry process driven by real clients (docker, skopeo).

The session-wide `registry` is a `cangku serve` subprocess on a free loopback port with a
temporary data directory. Tests that need to kill or restart a server use `registry_factory`.

Environment:
- CANGKU_REQUIRE_CLIENTS=1 turns a missing client (docker with a reachable daemon, skopeo)
  into a test failure instead of a skip; CI sets it.
- CANGKU_E2E_SERVER=reference runs the same tests against CNCF Distribution
  (`docker-registry`), to check a test's own logic: what passes there should pass here.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 15.0
CLIENT_COMMAND_TIMEOUT = 300.0

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])


PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


def pushed_digest(output: str) -> str:
    """The manifest digest `docker push` printed."""
    match = PUSHED_DIGEST.search(output)
    assert match, f"no digest in docker push output:\n{output}"
    return match.group(1)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_client(**kwargs: Any) -> httpx.Client:
    """A client for loopback servers: never routed through a proxy from the environment."""
    kwargs.setdefault("timeout", 30.0)
    return httpx.Client(trust_env=False, **kwargs)


# --------------------------------------------------------------------------- servers


@dataclass
class RegistryServer:
    """One registry process on 127.0.0.1:port serving the data in data_dir."""

    kind: str  # "cangku" or "reference"
    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_loopback_port)
    process: subprocess.Popen[bytes] | None = None
    # Accounts and token authentication on (cangku's default); off runs `serve --open`.
    auth: bool = False
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def host(self) -> str:
        """host:port for skopeo and HTTP."""
        return f"127.0.0.1:{self.port}"

    @property
    def docker_host(self) -> str:
        """host:port for docker, which allows plain HTTP to localhost without daemon config."""
        return f"localhost:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def cangku_cli(
        self, *args: str, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `cangku ARGS --data DATA` against this server's data directory."""
        completed = subprocess.run(
            [*_cangku_program(), *args, "--data", str(self.data_dir)],
            input=input,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")
        return completed

    def command(self) -> list[str]:
        if self.kind == "reference":
            config = self.data_dir.parent / f"{self.data_dir.name}-reference.yml"
            config.write_text(
                "version: 0.1\n"
                "log: {level: info}\n"
                f"storage:\n  filesystem: {{rootdirectory: {self.data_dir}}}\n"
                "  delete: {enabled: true}\n"
                f"http: {{addr: {self.host}}}\n"
            )
            return ["docker-registry", "serve", str(config)]
        command = [*_cangku_program(), "serve", "--listen", self.host, "--data", str(self.data_dir)]
        return command + ([] if self.auth else ["--open"]) + self.extra_args

    def start(self) -> None:
        assert self.process is None, "server already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The command line is the whole configuration: no CANGKU_* from the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANGKU_")}
        env.update(self.extra_env)
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n--- starting: {' '.join(command)}\n".encode())
            log.flush()
            # A session of its own, so that kill() reaches any worker processes too.
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.wait_until_ready()

    def wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        last_error = "no answer yet"
        with http_client(timeout=1.0, verify=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    self.process = None
                    pytest.fail(
                        f"{self.kind} exited with {code} before answering on {self.url}/v2/\n"
                        f"--- server log ---\n{self.log_tail()}",
                        pytrace=False,
                    )
                try:
                    response = client.get(f"{self.url}/v2/")
                    if response.status_code == (401 if self.auth else 200):
                        return
                    last_error = f"GET /v2/ answered {response.status_code}"
                except httpx.TransportError as error:
                    last_error = repr(error)
                time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"{self.kind} did not answer 200 on {self.url}/v2/ within {SERVER_START_TIMEOUT}s "
            f"({last_error})\n--- server log ---\n{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """SIGTERM the server by its PID, SIGKILL its process group if it does not exit."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._kill_group(process)  # workers it may have left behind

    def kill(self) -> None:
        """SIGKILL the server and everything it started: a crash, not a shutdown."""
        if self.process is None:
            return
        process, self.process = self.process, None
        self._kill_group(process)

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        # start_new_session made the server the leader of a group whose id is its PID.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=SERVER_STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _cangku_program() -> list[str]:
    """The console script next to this interpreter (the project's venv), else the module."""
    script = Path(sys.executable).with_name("cangku")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cangku"]


def server_kind() -> str:
    kind = os.environ.get("CANGKU_E2E_SERVER", "cangku")
    if kind not in ("cangku", "reference"):
        raise pytest.UsageError(f"CANGKU_E2E_SERVER must be cangku or reference, not {kind!r}")
    return kind


class RegistryServerFactory:
    """Makes servers with their own data directories; stops all of them at teardown."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.servers: list[RegistryServer] = []

    def start(
        self,
        *,
        auth: bool = False,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        scheme: str = "http",
    ) -> RegistryServer:
        name = f"registry-{len(self.servers)}"
        server = RegistryServer(
            kind=server_kind(),
            data_dir=self.base_dir / f"{name}-data",
            log_path=self.base_dir / f"{name}.log",
            auth=auth,
            extra_args=extra_args or [],
            extra_env=extra_env or {},
            scheme=scheme,
        )
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """The registry all e2e tests share (each test uses repositories of its own)."""
    factory = RegistryServerFactory(tmp_path_factory.mktemp("e2e-registry"))
    try:
        yield factory.start()
    finally:
        factory.stop_all()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryServerFactory]:
    """For tests that kill or restart a server: not the shared one."""
    factory = RegistryServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of each server's log to a failed e2e test's report."""
    report: pytest.TestReport = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            servers: list[RegistryServer] = []
            if isinstance(value, RegistryServer):
                servers = [value]
            elif isinstance(value, RegistryServerFactory):
                servers = value.servers
            for server in servers:
                report.sections.append(
                    (f"{server.kind} log ({server.host}, {server.log_path})", server.log_tail())
                )
    return report


# --------------------------------------------------------------------------- clients


@dataclass
class CommandResult:
    args: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


@dataclass
class Client:
    """A client program run with a controlled environment; failures show its output."""

    binary: str
    env: dict[str, str]
    global_args: tuple[str, ...] = ()

    def run(
        self,
        *args: str,
        check: bool = True,
        input: bytes | None = None,
        timeout: float = CLIENT_COMMAND_TIMEOUT,
    ) -> CommandResult:
        argv = [self.binary, *self.global_args, *args]
        completed = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        result = CommandResult(argv, completed.returncode, completed.stdout, completed.stderr)
        if check and result.returncode != 0:
            pytest.fail(
                f"`{' '.join(argv)}` exited with {result.returncode}\n"
                f"--- stdout ---\n{result.out[-5000:]}\n--- stderr ---\n{result.err[-5000:]}",
                pytrace=False,
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)


RequireClient = Callable[[str], str]


@pytest.fixture(scope="session")
def docker_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DOCKER_CONFIG for every docker command, so no login of the machine's user is seen."""
    return tmp_path_factory.mktemp("docker-config")


@pytest.fixture(scope="session")
def require_client(docker_config_dir: Path) -> RequireClient:
    """require_client("docker" | "skopeo" | other) -> path of the binary.

    A missing client skips the test, or fails it when CANGKU_REQUIRE_CLIENTS=1.
    docker also needs a daemon that answers `docker info`.
    """
    checked: dict[str, str | None] = {}
    problems: dict[str, str] = {}

    def check(name: str) -> str | None:
        binary = shutil.which(name)
        if binary is None:
            problems[name] = f"{name} is not installed"
            return None
        if name == "ctr" and containerd_socket() is None:
            problems[name] = f"no containerd answers on {' or '.join(CONTAINERD_SOCKETS)}"
            return None
        if name == "docker":
            env = {**os.environ, "DOCKER_CONFIG": str(docker_config_dir)}
            try:
                info = subprocess.run(
                    [binary, "info"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    env=env,
                    timeout=30,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                problems[name] = "`docker info` did not answer within 30s"
                return None
            if info.returncode != 0:
                error = info.stderr.decode(errors="replace").strip()
                problems[name] = f"the docker daemon does not answer `docker info`: {error}"
                return None
        return binary

    def require(name: str) -> str:
        if name not in checked:
            checked[name] = check(name)
        binary = checked[name]
        if binary is not None:
            return binary
        message = f"e2e client unavailable: {problems[name]}"
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"{message} (CANGKU_REQUIRE_CLIENTS=1)", pytrace=False)
        pytest.skip(message)

    return require


@pytest.fixture(scope="session")
def docker(require_client: RequireClient, docker_config_dir: Path) -> Client:
    binary = require_client("docker")
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config_dir), "DOCKER_BUILDKIT": "0"}
    return Client(binary, env)


# A containerd of its own, or the one dockerd starts when there is none.
CONTAINERD_SOCKETS = (
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
)


def containerd_socket() -> str | None:
    for socket_path in CONTAINERD_SOCKETS:
        if Path(socket_path).exists():
            answered = subprocess.run(
                ["ctr", "--address", socket_path, "version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
            if answered.returncode == 0:
                return socket_path
    return None


@pytest.fixture(scope="session")
def ctr(require_client: RequireClient) -> Client:
    """containerd's own client, in a containerd namespace of the tests' own."""
    binary = require_client("ctr")
    socket_path = containerd_socket()
    assert socket_path is not None
    return Client(binary, dict(os.environ), ("--address", socket_path, "--namespace", "cangku-e2e"))


@pytest.fixture(scope="session")
def skopeo(require_client: RequireClient, tmp_path_factory: pytest.TempPathFactory) -> Client:
    binary = require_client("skopeo")
    auth_dir = tmp_path_factory.mktemp("skopeo-auth")
    # Our own (empty) auth file; --insecure-policy: no signature policy for local test images.
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth_dir / "auth.json")}
    return Client(binary, env, global_args=("--insecure-policy",))


# --------------------------------------------------------------------------- docker images


@dataclass
class DockerImage:
    ref: str
    image_id: str
    files: dict[str, bytes]  # absolute path in the image -> content
    layers: list[str]  # diff ids, base first


class DockerImageBuilder:
    """Builds multi-layer images in the local daemon without network; removes them after."""

    def __init__(self, docker: Client, work_dir: Path) -> None:
        self.docker = docker
        self.work_dir = work_dir
        self.tags: list[str] = []
        self.image_ids: list[str] = []
        self.containers: list[str] = []
        self.built: dict[str, DockerImage] = {}

    def build(self, ref: str, *, layers: int = 3, base: str | None = None) -> DockerImage:
        """Tag ref with an image of `layers` COPY layers on top of `base`.

        Without a base, one is imported from a tiny random rootfs (one more layer); its
        local tag is dropped once built on, so that removing ref removes every layer.
        """
        token = uuid.uuid4().hex[:12]
        context = self.work_dir / f"build-{token}"
        context.mkdir(parents=True)
        files: dict[str, bytes] = {}
        imported_tag = None
        if base is None:
            base_content = os.urandom(4096)
            files[f"/e2e/base-{token}.bin"] = base_content
            imported_tag = f"cangku-e2e-base:{token}"
            self.docker.run(
                "import", "-", imported_tag, input=tar_of({f"e2e/base-{token}.bin": base_content})
            )
            self.tags.append(imported_tag)
            base = imported_tag
        steps = [f"FROM {base}"]
        # Different sizes: from one read to many chunks of a streamed upload.
        sizes = [1024, 256 * 1024, 2 * 1024 * 1024]
        for index in range(layers):
            name = f"layer-{token}-{index}.bin"
            content = os.urandom(sizes[index % len(sizes)])
            (context / name).write_bytes(content)
            files[f"/e2e/{name}"] = content
            steps.append(f"COPY {name} /e2e/{name}")
        (context / "Dockerfile").write_text("\n".join(steps) + "\n")
        self.tags.append(ref)
        self.docker.run("build", "--quiet", "--tag", ref, str(context))
        image = self.docker.json("image", "inspect", ref)[0]
        self.image_ids.append(image["Id"])
        if imported_tag is not None:
            self.docker.run("rmi", imported_tag)  # only untags: the new image depends on it
        if base in self.built:
            files = {**self.built[base].files, **files}
        self.built[ref] = DockerImage(ref, image["Id"], files, image["RootFS"]["Layers"])
        return self.built[ref]

    def read_file(self, image: str, path: str) -> bytes:
        """The content of path in image, through a created (never started) container."""
        container = self.docker.run("create", "--network", "none", image, "/none").out.strip()
        self.containers.append(container)
        try:
            archive = self.docker.run("cp", f"{container}:{path}", "-").stdout
        finally:
            self.docker.run("rm", container, check=False)
            self.containers.remove(container)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            assert member is not None, f"{path} is not a regular file in {image}"
            return member.read()

    def cleanup(self) -> None:
        for container in self.containers:
            self.docker.run("rm", "--force", container, check=False)
        # Newest first, so that children go before the images they were built on.
        for tag in reversed(self.tags):
            self.docker.run("rmi", tag, check=False)
        for image_id in reversed(self.image_ids):
            self.docker.run("rmi", image_id, check=False)


@pytest.fixture
def docker_images(docker: Client, tmp_path: Path) -> Iterator[DockerImageBuilder]:
    builder = DockerImageBuilder(docker, tmp_path)
    try:
        yield builder
    finally:
        builder.cleanup()


def tar_of(files: dict[str, bytes]) -> bytes:
    """A reproducible tar of regular files (parent directories included)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


# --------------------------------------------------------------------------- OCI layouts


class OciLayout:
    """An OCI image layout directory built by hand (blobs, manifests, index.json).

    Every add_* returns the OCI descriptor of what it wrote; tag() names a descriptor in
    index.json so that skopeo can address it as oci:DIR:NAME.
    """

    def __init__(self, path: Path) -> None:
        """An existing layout, e.g. one skopeo wrote: blob() and manifest_digest() work."""
        self.path = path
        self.tagged: list[dict[str, Any]] = []

    @classmethod
    def create(cls, path: Path) -> OciLayout:
        layout = cls(path)
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        layout._write_index()
        return layout

    def add_blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256_digest(data)
        (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    def add_image(self, *, architecture: str, files: dict[str, bytes]) -> dict[str, Any]:
        """One single-layer linux image; returns its manifest's descriptor with a platform.

        The layer is gzipped (quickly: the test data is random) because skopeo would
        compress an uncompressed layer on its way to a registry, changing its digest.
        """
        layer_tar = tar_of(files)
        layer = self.add_blob(gzip.compress(layer_tar, compresslevel=1, mtime=0), OCI_LAYER_GZIP)
        config = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]},
            "history": [{"created_by": "cangku e2e test"}],
        }
        config_descriptor = self.add_blob(json.dumps(config, indent=2).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [layer],
        }
        descriptor = self.add_blob(json.dumps(manifest, indent=2).encode(), OCI_MANIFEST)
        descriptor["platform"] = {"architecture": architecture, "os": "linux"}
        return descriptor

    def add_index(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.add_blob(json.dumps(index, indent=2).encode(), OCI_INDEX)

    def tag(self, descriptor: dict[str, Any], name: str) -> None:
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.tagged.append(entry)
        self._write_index()

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.tagged}
        (self.path / "index.json").write_text(json.dumps(index, indent=2))

    def manifest_digest(self, name: str) -> str:
        """The digest that index.json gives for the tag `name`."""
        index = json.loads((self.path / "index.json").read_text())
        for entry in index["manifests"]:
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
                digest: str = entry["digest"]
                return digest
        raise AssertionError(f"no {name!r} in {self.path}/index.json: {index}")


@pytest.fixture
def oci_layout(tmp_path: Path) -> Callable[[str], OciLayout]:
    """oci_layout(name) -> a new, empty OCI layout directory under tmp_path."""

    def make(name: str) -> OciLayout:
        return OciLayout.create(tmp_path / name)

    return make
