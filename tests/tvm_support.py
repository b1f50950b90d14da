"""What the TVM test modules share: skip the module where the backend is unavailable, and build
into a private cache (stale builds from other runs must not stand in for the code under test)."""
import pytest


def require_tvm():
    """The tvm module, or skip the calling test module saying why."""
    try:
        from tvmlite.backends.tvm.target import import_tvm

        return import_tvm()
    except Exception as e:  # noqa: BLE001 - the backend is optional: missing or broken apache-tvm
        pytest.skip(f"TVM backend unavailable: {e}", allow_module_level=True)


@pytest.fixture(autouse=True)
def private_tvm_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TVMLITE_CACHE", str(tmp_path_factory.getbasetemp() / "tvm-cache"))
