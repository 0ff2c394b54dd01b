"""Accounts, `docker login`, namespaces, organizations, access tokens and HTTPS, driven by
the real docker and skopeo against a server with authentication on.

One server with accounts is shared by the module (each test uses repositories of its own);
the HTTPS tests start servers of their own.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.tls import TlsFiles, make_tls_files

from .conftest import (
    Client,
    CommandResult,
    DockerImageBuilder,
    OciLayout,
    RegistryServer,
    RegistryServerFactory,
    http_client,
    server_kind,
)

pytestmark = pytest.mark.e2e

DENIED = "denied: requested access to the resource is denied"
ADMIN_PASSWORD = f"admin-{uuid.uuid4().hex}"
# Every account of the shared server, with a password made for this run.
PASSWORDS = {name: f"{name}-{uuid.uuid4().hex[:16]}" for name in ("jimo", "lee", "wang", "zhao")}
DOCKER_CERTS_DIR = Path("/etc/docker/certs.d")


def unique(prefix: str) -> str:
    """A repository name component no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def combined(result: CommandResult) -> str:
    return result.out + result.err


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def add_user(server: RegistryServer, name: str, password: str) -> None:
    server.cangku_cli("user", "add", name, "--password-stdin", input=f"{password}\n".encode())


def login(
    docker: Client, host: str, user: str, secret: str, *, check: bool = True
) -> CommandResult:
    return docker.run(
        "login", host, "-u", user, "--password-stdin", input=f"{secret}\n".encode(), check=check
    )


def assert_login_refused(result: CommandResult) -> None:
    assert result.returncode != 0, f"login should fail:\n{combined(result)}"
    assert "Login Succeeded" not in result.out
    output = combined(result).lower()
    assert "unauthorized" in output, combined(result)
    assert "incorrect username or password" in output, combined(result)


def assert_push_denied(result: CommandResult) -> None:
    assert result.returncode != 0, f"push should be refused:\n{combined(result)}"
    assert DENIED in combined(result), combined(result)


def assert_pull_refused(result: CommandResult) -> None:
    assert result.returncode != 0, f"pull should be refused:\n{combined(result)}"
    output = combined(result)
    assert "denied" in output or "unauthorized" in output, output


def tag(docker: Client, images: DockerImageBuilder, source: str, target: str) -> None:
    """`docker tag`, with the new tag removed when the test ends."""
    docker.run("tag", source, target)
    images.tags.append(target)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A server with accounts (admin via CANGKU_ADMIN_PASSWORD, users added with the CLI)."""
    if server_kind() != "cangku":
        pytest.skip("accounts are cangku's: the reference registry runs without them here")
    factory = RegistryServerFactory(tmp_path_factory.mktemp("e2e-auth"))
    try:
        server = factory.start(auth=True, extra_env={"CANGKU_ADMIN_PASSWORD": ADMIN_PASSWORD})
        for name, password in PASSWORDS.items():
            add_user(server, name, password)
        yield server
    finally:
        factory.stop_all()


@pytest.fixture
def docker_cli(docker: Client, tmp_path: Path) -> Client:
    """docker with a DOCKER_CONFIG of this test's own: its logins are seen nowhere else."""
    config = tmp_path / "docker-config"
    config.mkdir()
    return Client(docker.binary, {**docker.env, "DOCKER_CONFIG": str(config)})


# --------------------------------------------------------------------------- docker login


def test_forwarded_headers_from_a_loopback_peer_are_not_trusted_by_default(
    auth_server: RegistryServer,
) -> None:
    """No `trusted_proxies` configured: a local process cannot pick the scheme or host of the
    token realm (nor, through X-Forwarded-For, the address its rate limits count)."""
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "registry.example.com",
        "X-Forwarded-For": "203.0.113.7",
    }
    with http_client() as client:
        response = client.get(f"{auth_server.url}/v2/", headers=forwarded)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert f'realm="http://{auth_server.host}/auth/token"' in challenge, challenge
    # The operator is told, once, how to trust a proxy that is really theirs.
    assert "ignoring X-Forwarded-* from 127.0.0.1" in auth_server.log_tail(100_000)


def test_docker_login_succeeds_and_a_wrong_password_is_refused(
    auth_server: RegistryServer, docker_cli: Client
) -> None:
    host = auth_server.docker_host
    assert "Login Succeeded" in login(docker_cli, host, "jimo", PASSWORDS["jimo"]).out
    # The initial admin has the password from CANGKU_ADMIN_PASSWORD.
    assert "Login Succeeded" in login(docker_cli, host, "admin", ADMIN_PASSWORD).out

    assert_login_refused(login(docker_cli, host, "jimo", "not-jimos-password", check=False))
    # An unknown account gets the same answer as a wrong password.
    assert_login_refused(login(docker_cli, host, "nobody", PASSWORDS["jimo"], check=False))


def test_push_to_own_namespace_works_and_to_another_is_denied(
    auth_server: RegistryServer, docker_cli: Client, docker_images: DockerImageBuilder
) -> None:
    host = auth_server.docker_host
    name = unique("app")
    own = f"{host}/jimo/{name}:1"
    image = docker_images.build(own, layers=1)
    login(docker_cli, host, "jimo", PASSWORDS["jimo"])

    docker_cli.run("push", own)
    docker_cli.run("rmi", own)
    docker_cli.run("pull", own)
    assert docker_cli.json("image", "inspect", own)[0]["Id"] == image.image_id

    others = f"{host}/lee/{name}:1"
    tag(docker_cli, docker_images, own, others)
    assert_push_denied(docker_cli.run("push", others, check=False))

    # Nothing of it reached lee's namespace.
    with http_client(base_url=auth_server.url) as client:
        response = client.get(f"/v2/lee/{name}/tags/list", headers=basic("lee", PASSWORDS["lee"]))
        assert response.status_code == 404, response.text


def test_push_mounts_layers_from_a_repository_the_user_may_read_and_only_from_such(
    auth_server: RegistryServer, docker_cli: Client, docker_images: DockerImageBuilder
) -> None:
    """Cross-repository mounts with tokens: docker asks for pull on the source, and gets it
    only where the account may pull (issue 12, item 3)."""
    host = auth_server.docker_host
    public_name, private_name = f"lee/{unique('base')}", f"lee/{unique('secret')}"
    public_ref, private_ref = f"{host}/{public_name}:1", f"{host}/{private_name}:1"
    docker_images.build(public_ref, layers=2)
    docker_images.build(private_ref, layers=2)
    login(docker_cli, host, "lee", PASSWORDS["lee"])
    docker_cli.run("push", public_ref)
    docker_cli.run("push", private_ref)
    auth_server.cangku_cli("repo", "set", public_name, "--public")

    login(docker_cli, host, "jimo", PASSWORDS["jimo"])
    on_public = f"{host}/jimo/{unique('app')}:1"
    docker_images.build(on_public, layers=1, base=public_ref)
    pushed = combined(docker_cli.run("push", on_public))
    assert f"Mounted from {public_name}" in pushed, pushed

    on_private = f"{host}/jimo/{unique('app')}:1"
    docker_images.build(on_private, layers=1, base=private_ref)
    pushed = combined(docker_cli.run("push", on_private))
    assert "Mounted from" not in pushed, pushed  # uploaded instead: lee's secret stays his
    docker_cli.run("rmi", on_private)
    docker_cli.run("pull", on_private)


def test_anonymous_pull_of_public_repository_works_and_of_private_is_refused(
    auth_server: RegistryServer, docker_cli: Client, docker_images: DockerImageBuilder
) -> None:
    host = auth_server.docker_host
    public_name, private_name = f"lee/{unique('pub')}", f"lee/{unique('priv')}"
    public_ref, private_ref = f"{host}/{public_name}:1", f"{host}/{private_name}:1"
    public_image = docker_images.build(public_ref, layers=1)
    private_image = docker_images.build(private_ref, layers=1)
    login(docker_cli, host, "lee", PASSWORDS["lee"])
    docker_cli.run("push", public_ref)
    docker_cli.run("push", private_ref)
    auth_server.cangku_cli("repo", "set", public_name, "--public")

    docker_cli.run("logout", host)
    docker_cli.run("rmi", public_ref)
    docker_cli.run("rmi", private_ref)

    docker_cli.run("pull", public_ref)
    assert docker_cli.json("image", "inspect", public_ref)[0]["Id"] == public_image.image_id
    assert_pull_refused(docker_cli.run("pull", private_ref, check=False))
    gone = docker_cli.run("image", "inspect", private_image.image_id, check=False)
    assert gone.returncode != 0, "the refused pull should not have brought the image back"

    # Anonymous callers may pull public repositories and nothing else.
    assert_push_denied(docker_cli.run("push", public_ref, check=False))


def test_organization_writer_pushes_and_reader_only_pulls(
    auth_server: RegistryServer, docker_cli: Client, docker_images: DockerImageBuilder
) -> None:
    host = auth_server.docker_host
    organization = unique("acme")
    auth_server.cangku_cli("org", "add", organization)
    auth_server.cangku_cli("org", "member", "add", organization, "wang", "--role", "writer")
    auth_server.cangku_cli("org", "member", "add", organization, "zhao", "--role", "reader")
    members = auth_server.cangku_cli("org", "list").stdout.decode()
    assert "wang  writer" in members and "zhao  reader" in members, members

    ref = f"{host}/{organization}/x:1"
    image = docker_images.build(ref, layers=1)

    login(docker_cli, host, "wang", PASSWORDS["wang"])
    docker_cli.run("push", ref)

    login(docker_cli, host, "zhao", PASSWORDS["zhao"])
    docker_cli.run("rmi", ref)
    docker_cli.run("pull", ref)
    assert docker_cli.json("image", "inspect", ref)[0]["Id"] == image.image_id
    second = f"{host}/{organization}/x:2"
    tag(docker_cli, docker_images, ref, second)
    assert_push_denied(docker_cli.run("push", second, check=False))
    assert_push_denied(docker_cli.run("push", f"{host}/{organization}/x:1", check=False))

    # Not a member: the (private) repository is not jimo's to pull.
    login(docker_cli, host, "jimo", PASSWORDS["jimo"])
    docker_cli.run("rmi", ref)
    assert_pull_refused(docker_cli.run("pull", ref, check=False))


# --------------------------------------------------------------------------- access tokens


def create_token(server: RegistryServer, user: str, name: str, scope: str) -> str:
    token = server.cangku_cli("token", "create", user, "--name", name, "--scope", scope)
    secret = token.stdout.decode().strip()
    assert secret.startswith("ckt_") and len(secret.splitlines()) == 1, secret
    return secret


def test_access_tokens_work_as_docker_passwords_until_revoked(
    auth_server: RegistryServer, docker_cli: Client, docker_images: DockerImageBuilder
) -> None:
    host = auth_server.docker_host
    name = unique("tok")
    ref = f"{host}/jimo/{name}:1"
    image = docker_images.build(ref, layers=1)
    write_name, read_name = unique("ci"), unique("ro")
    write_token = create_token(auth_server, "jimo", write_name, "write")
    read_token = create_token(auth_server, "jimo", read_name, "read")

    # A write token logs in and pushes.
    assert "Login Succeeded" in login(docker_cli, host, "jimo", write_token).out
    docker_cli.run("push", ref)
    listed = auth_server.cangku_cli("token", "list", "jimo").stdout.decode()
    write_line = next(line for line in listed.splitlines() if f"  {write_name}  " in line)
    assert "last used never" not in write_line and "active" in write_line, listed

    # A read token pulls, and cannot push.
    assert "Login Succeeded" in login(docker_cli, host, "jimo", read_token).out
    docker_cli.run("rmi", ref)
    docker_cli.run("pull", ref)
    assert docker_cli.json("image", "inspect", ref)[0]["Id"] == image.image_id
    second = f"{host}/jimo/{name}:2"
    tag(docker_cli, docker_images, ref, second)
    refused = docker_cli.run("push", second, check=False, timeout=60)
    assert_push_denied(refused)

    # Revoked while docker holds a login made with it: pushes stop, and so do new logins.
    login(docker_cli, host, "jimo", write_token)
    auth_server.cangku_cli("token", "revoke", "jimo", write_name)
    listed = auth_server.cangku_cli("token", "list", "jimo").stdout.decode()
    assert "revoked" in next(line for line in listed.splitlines() if f"  {write_name}  " in line)
    after = docker_cli.run("push", second, check=False, timeout=60)
    assert after.returncode != 0, f"a push with a revoked token's login worked:\n{combined(after)}"
    assert "unauthorized" in combined(after).lower(), combined(after)
    assert_login_refused(login(docker_cli, host, "jimo", write_token, check=False))
    # The read token is untouched by the revocation of the other one.
    assert "Login Succeeded" in login(docker_cli, host, "jimo", read_token).out


# --------------------------------------------------------------------------- skopeo


def test_skopeo_with_credentials(
    auth_server: RegistryServer, skopeo: Client, oci_layout: Callable[[str], OciLayout]
) -> None:
    layout = oci_layout("image")
    descriptor = layout.add_image(architecture="amd64", files={"etc/hello": os.urandom(1024)})
    layout.tag(descriptor, "1.0")
    jimo = f"jimo:{PASSWORDS['jimo']}"
    source = f"docker://{auth_server.host}/jimo/{unique('sk')}:1.0"
    copy = f"docker://{auth_server.host}/jimo/{unique('sk-copy')}:1.0"
    tls_off = "--tls-verify=false"

    skopeo.run(
        "copy", "--dest-tls-verify=false", "--dest-creds", jimo, f"oci:{layout.path}:1.0", source
    )
    digest = skopeo.run("inspect", tls_off, "--creds", jimo, "--format", "{{.Digest}}", source)
    assert digest.out.strip() == descriptor["digest"]
    skopeo.run(
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        jimo,
        "--dest-creds",
        jimo,
        source,
        copy,
    )
    copied = skopeo.run("inspect", tls_off, "--creds", jimo, "--format", "{{.Digest}}", copy)
    assert copied.out.strip() == descriptor["digest"]

    # Wrong password, no credentials, another user: refused.
    wrong = skopeo.run("inspect", tls_off, "--creds", "jimo:not-the-password", source, check=False)
    assert wrong.returncode != 0
    assert "unauthorized" in wrong.err.lower() or "authentication required" in wrong.err, wrong.err
    anonymous = skopeo.run("inspect", tls_off, "--no-creds", source, check=False)
    assert anonymous.returncode != 0
    lee = f"lee:{PASSWORDS['lee']}"
    assert skopeo.run("inspect", tls_off, "--creds", lee, source, check=False).returncode != 0
    pushed_by_lee = skopeo.run(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        lee,
        f"oci:{layout.path}:1.0",
        f"docker://{auth_server.host}/jimo/{unique('sk-lee')}:1.0",
        check=False,
    )
    assert pushed_by_lee.returncode != 0
    # skopeo's first request is a HEAD of a blob: a 403 without a body to quote.
    assert "403" in pushed_by_lee.err or "denied" in pushed_by_lee.err, pushed_by_lee.err
    bad_dest = skopeo.run(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "jimo:not-the-password",
        f"oci:{layout.path}:1.0",
        f"docker://{auth_server.host}/jimo/{unique('sk-bad')}:1.0",
        check=False,
    )
    assert bad_dest.returncode != 0
    assert "unauthorized" in bad_dest.err.lower(), bad_dest.err


# --------------------------------------------------------------------------- HTTPS


@contextlib.contextmanager
def docker_trusts(host: str, ca: Path) -> Iterator[Path]:
    """Install ca as /etc/docker/certs.d/HOST/ca.crt (read by dockerd on every connection)."""
    created_root = not DOCKER_CERTS_DIR.exists()
    directory = DOCKER_CERTS_DIR / host
    try:
        directory.mkdir(parents=True, exist_ok=True)  # a leftover of a killed run: ours
    except PermissionError as error:
        message = f"cannot install a CA for docker in {DOCKER_CERTS_DIR}: {error}"
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        shutil.copyfile(ca, directory / "ca.crt")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                DOCKER_CERTS_DIR.rmdir()  # only if nothing else was put there meanwhile


def start_tls_server(factory: RegistryServerFactory, tls: TlsFiles) -> RegistryServer:
    if server_kind() != "cangku":
        pytest.skip("accounts are cangku's: the reference registry runs without them here")
    server = factory.start(
        auth=True,
        extra_args=["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)],
        extra_env={"CANGKU_ADMIN_PASSWORD": ADMIN_PASSWORD},
        scheme="https",
    )
    add_user(server, "jimo", PASSWORDS["jimo"])
    return server


def docker_push_pull_round_trip(
    docker: Client, images: DockerImageBuilder, host: str, password: str
) -> None:
    ref = f"{host}/jimo/{unique('tls')}:1"
    image = images.build(ref, layers=1)
    assert "Login Succeeded" in login(docker, host, "jimo", password).out
    docker.run("push", ref)
    docker.run("rmi", ref)
    docker.run("pull", ref)
    assert docker.json("image", "inspect", ref)[0]["Id"] == image.image_id


def test_https_with_a_self_signed_ca(
    registry_factory: RegistryServerFactory,
    docker_cli: Client,
    docker_images: DockerImageBuilder,
    skopeo: Client,
    oci_layout: Callable[[str], OciLayout],
    tmp_path: Path,
) -> None:
    tls = make_tls_files(tmp_path / "tls", [])
    server = start_tls_server(registry_factory, tls)
    port = server.port

    # The challenge sends clients to the token endpoint over HTTPS, at the host they used.
    with http_client(verify=tls.context()) as client:
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            response = client.get(f"https://{host}/v2/")
            assert response.status_code == 401, response.text
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith(f'Bearer realm="https://{host}/auth/token"'), challenge
            token = client.get(
                f"https://{host}/auth/token",
                params={"service": "cangku", "scope": "repository:jimo/x:pull"},
                headers=basic("jimo", PASSWORDS["jimo"]),
            )
            assert token.status_code == 200, token.text
    # Only because of our CA: the default trust store refuses the certificate.
    with http_client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://localhost:{port}/v2/")
    # And plain HTTP is not served at all.
    with http_client() as client, pytest.raises(httpx.TransportError):
        client.get(f"http://localhost:{port}/v2/")

    with docker_trusts(server.docker_host, tls.ca):
        docker_push_pull_round_trip(
            docker_cli, docker_images, server.docker_host, PASSWORDS["jimo"]
        )

    # skopeo verifies the certificate: refused without the CA, accepted with --cert-dir.
    layout = oci_layout("image")
    descriptor = layout.add_image(architecture="amd64", files={"etc/tls": os.urandom(512)})
    layout.tag(descriptor, "1.0")
    cert_dir = tmp_path / "skopeo-certs"
    cert_dir.mkdir()
    shutil.copyfile(tls.ca, cert_dir / "ca.crt")
    jimo = f"jimo:{PASSWORDS['jimo']}"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        reference = f"docker://{host}/jimo/{unique('tls-sk')}:1.0"
        untrusted = skopeo.run(
            "copy", "--dest-creds", jimo, f"oci:{layout.path}:1.0", reference, check=False
        )
        assert untrusted.returncode != 0
        assert "certificate" in untrusted.err, untrusted.err
        skopeo.run(
            "copy",
            "--dest-tls-verify=true",
            "--dest-cert-dir",
            str(cert_dir),
            "--dest-creds",
            jimo,
            f"oci:{layout.path}:1.0",
            reference,
        )
        inspected = skopeo.run(
            "inspect",
            "--tls-verify=true",
            "--cert-dir",
            str(cert_dir),
            "--creds",
            jimo,
            "--format",
            "{{.Digest}}",
            reference,
        )
        assert inspected.out.strip() == descriptor["digest"]
