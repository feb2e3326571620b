"""GPU facts parsing, tested against nvidia-smi output recorded on real machines.

Where each fixture comes from: tests/fixtures/nvidia-smi/SOURCES.md.
"""
import ctypes
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from vllm_fleet import gpu_facts as gpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"
MIB = 1024 * 1024
GIB = 1024 * MIB


def fixture(name):
    return (FIXTURES / name).read_text()


def parse(name):
    return gpu.parse_query_gpu_csv(fixture(name))


# --------------------------------------------------------------------------
# nvidia-smi --query-gpu CSV
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, model, total_mib, usable_mib, capability, mig, persistence, fabric",
    [
        # memory.used + memory.free: what CUDA can allocate
        ("h100-sxm5-80gb", "NVIDIA H100 80GB HBM3", 81559, 0 + 81081, "9.0", False, True, "Completed"),
        ("h100-mig", "NVIDIA H100 80GB HBM3", 81559, 59 + 81022, "9.0", True, True, "Completed"),
        ("h200", "NVIDIA H200", 143771, 0 + 143158, "9.0", False, True, "Completed"),
        ("l40s", "NVIDIA L40S", 46068, 0 + 45460, "8.9", None, False, None),
        ("rtx-4080-super", "NVIDIA GeForce RTX 4080 SUPER", 16376, 596 + 15348, "8.9", None, False, None),
        ("a100-sxm4-80gb-mig", "NVIDIA A100-SXM4-80GB", 81920, 50 + 80999, None, True, False, None),
    ],
)
def test_query_gpu_csv_recorded(name, model, total_mib, usable_mib, capability, mig, persistence, fabric):
    (parsed,) = parse(name + ".query-gpu.csv")
    assert parsed["index"] == 0
    assert parsed["name"] == model
    assert parsed["memory_total_bytes"] == total_mib * MIB
    assert parsed["memory_usable_bytes"] == usable_mib * MIB
    assert parsed["compute_capability"] == capability
    assert parsed["mig_enabled"] is mig
    assert parsed["persistence_mode"] is persistence
    assert parsed["fabric_state"] == fabric


def test_h100_usable_memory_matches_what_vllm_logs():
    # vLLM reports 79.18 GiB total on this card; nvidia-smi says 81559 MiB total, 479 MiB reserved.
    (h100,) = parse("h100-sxm5-80gb.query-gpu.csv")
    assert h100["memory_reserved_bytes"] == 479 * MIB
    assert h100["memory_usable_bytes"] / GIB == pytest.approx(79.18, abs=0.005)
    assert h100["memory_total_bytes"] - h100["memory_reserved_bytes"] == pytest.approx(
        h100["memory_usable_bytes"], abs=MIB
    )
    assert h100["driver_version"] == "590.48.01"
    assert h100["uuid"] == "GPU-00000000-0000-0000-0000-000000000000"
    assert h100["pci_bus_id"] == "00000000:00:09.0"


def test_query_gpu_csv_subset_of_fields():
    # Two L40S, queried for name, driver, memory and bus id only: absent fields are None.
    gpus = parse("l40s-2x.query-gpu.csv")
    assert [g["pci_bus_id"] for g in gpus] == ["00000000:01:00.0", "00000000:91:00.0"]
    assert {g["memory_total_bytes"] for g in gpus} == {46068 * MIB}
    assert {g["driver_version"] for g in gpus} == {"595.71.05"}
    assert all(g["index"] is None and g["memory_usable_bytes"] is None for g in gpus)


def test_query_gpu_csv_without_free_memory_has_no_usable_figure():
    gpus = parse("rtx-4090-2x.query-gpu.csv")
    assert [g["index"] for g in gpus] == [0, 1]
    assert [g["memory_used_bytes"] for g in gpus] == [507 * MIB, 459 * MIB]
    assert all(g["memory_usable_bytes"] is None and g["mig_enabled"] is None for g in gpus)


def test_query_gpu_csv_nounits_and_skipped_error_lines():
    text = (
        "index, name, memory.total [MiB], memory.used [MiB], memory.free [MiB]\n"
        "0, NVIDIA H100 80GB HBM3, 81559, 0, 81081\n" + fixture("error-device-handle-unknown.txt")
    )
    (parsed,) = gpu.parse_query_gpu_csv(text)
    assert parsed["memory_usable_bytes"] == 81081 * MIB


def test_query_gpu_csv_needs_a_header():
    with pytest.raises(ValueError):
        gpu.parse_query_gpu_csv("0, NVIDIA H100 80GB HBM3, 81559 MiB\n")
    assert gpu.parse_query_gpu_csv("") == []


def test_query_command_and_optional_fields():
    argv = gpu.query_gpu_command("/usr/bin/nvidia-smi")
    assert argv[0] == "/usr/bin/nvidia-smi" and argv[-1] == "--format=csv"
    assert "compute_cap" in argv[1] and "mig.mode.current" in argv[1]
    assert set(gpu.OPTIONAL_QUERY_FIELDS) <= set(gpu.QUERY_FIELDS)
    assert gpu.invalid_query_field(fixture("error-invalid-field.txt")) == "compute_cap"
    assert gpu.invalid_query_field(fixture("h100-sxm5-80gb.query-gpu.csv")) is None


# --------------------------------------------------------------------------
# CUDA version, topology, NVLink, NVSwitch
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, version",
    [
        ("h100-sxm5-80gb.nvidia-smi.txt", "13.1"),
        ("h100-sxm5-80gb.version.txt", "13.1"),
        ("l40s.nvidia-smi.txt", "13.2"),
        ("rtx-4090-2x.nvidia-smi.txt", "12.4"),
    ],
)
def test_cuda_version(name, version):
    assert gpu.parse_cuda_version(fixture(name)) == version


def test_cuda_version_not_found():
    # `nvidia-smi -q` on a vGPU host (bigstack-oss/cubecos#312)
    assert gpu.parse_cuda_version("CUDA Version                              : Not Found\n") is None


@pytest.mark.parametrize(
    "name, count, pairs, nvlink",
    [
        ("h100-8x-nvswitch.topo-m.txt", 8, 28, True),
        ("h100-4x-nv6.topo-m.txt", 4, 6, True),
        ("rtx-4090-8x.topo-m.txt", 8, 0, False),
        ("h100-sxm5-80gb.topo-m.txt", 1, 0, False),  # with the terminal underline escapes
        ("l40s.topo-m.txt", 1, 0, False),
    ],
)
def test_topology_matrix(name, count, pairs, nvlink):
    topology = gpu.parse_topology_matrix(fixture(name))
    assert topology["gpu_count"] == count
    assert topology["nvlink_pairs"] == pairs
    assert topology["nvlink"] is nvlink


def test_topology_links_by_pair():
    links = gpu.parse_topology_matrix(fixture("rtx-4090-8x.topo-m.txt"))["links"]
    assert len(links) == 28 and set(links.values()) == {"SYS"}
    assert gpu.parse_topology_matrix(fixture("h100-4x-nv6.topo-m.txt"))["links"]["0-3"] == "NV6"
    assert gpu.parse_topology_matrix("") == {"gpu_count": 0, "links": {}, "nvlink_pairs": 0, "nvlink": False}


@pytest.mark.parametrize(
    "name, active",
    [
        ("h100-sxm5-80gb.nvlink-s.txt", 18),
        ("l40s.nvlink-s.txt", 0),  # "Device does not have or support Nvlink"
        ("h100-mig.nvlink-s.txt", 0),  # "Nvlink queries are not supported for Devices in MIG mode"
    ],
)
def test_nvlink_status(name, active):
    status = gpu.parse_nvlink_status(fixture(name))
    assert status["active_links"] == {0: active}
    assert status["nvlink"] is (active > 0)


def test_nvlink_status_inactive_links():
    status = gpu.parse_nvlink_status("GPU 0: X (UUID: GPU-1)\n\t Link 0: <inactive>\n\t Link 1: 26.562 GB/s\n")
    assert status["active_links_total"] == 1


def test_count_nvswitches_from_sysfs(tmp_path):
    # PCI class 0x0680 ("Bridge: other") from vendor 0x10de is how NVSwitch chips
    # enumerate, e.g. "Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch] [10de:22a3]".
    devices = {
        "0000:07:00.0": ("0x10de\n", "0x068000\n"),  # NVSwitch
        "0000:08:00.0": ("0x10de\n", "0x068000\n"),  # NVSwitch
        "0000:1b:00.0": ("0x10de\n", "0x030200\n"),  # 3D controller (GPU)
        "0000:04:00.0": ("0x1a03\n", "0x030000\n"),  # ASPEED VGA
        "0000:05:00.0": ("0x8086\n", "0x068000\n"),  # someone else's bridge
    }
    for address, (vendor, pci_class) in devices.items():
        (tmp_path / address).mkdir()
        (tmp_path / address / "vendor").write_text(vendor)
        (tmp_path / address / "class").write_text(pci_class)
    (tmp_path / "0000:ff:00.0").mkdir()  # unreadable entry is skipped
    assert gpu.count_nvswitches(gpu.read_pci_devices(str(tmp_path))) == 2
    assert gpu.read_pci_devices(str(tmp_path / "missing")) == []


# --------------------------------------------------------------------------
# Error states
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, returncode, state, words",
    [
        ("error-no-driver.txt", 9, "no_driver", "kernel module"),
        ("error-no-devices.txt", 6, "no_gpu", "found no GPU"),
        ("error-driver-library-mismatch.txt", 18, "driver_library_mismatch", "Reboot"),
        ("error-driver-library-mismatch-570.txt", 18, "driver_library_mismatch", "NVML library version: 570.124"),
        ("error-gpu-lost.txt", 15, "gpu_lost", "GPU 0000:02:00.0: GPU is lost"),
        ("error-device-handle-unknown.txt", 255, "gpu_lost", "GPU 0000:0B:00.0: Unknown Error"),
    ],
)
def test_classify_recorded_errors(name, returncode, state, words):
    # nvidia-smi prints these on stdout; the exit code is NVML's return code.
    result = gpu.classify_error(returncode, fixture(name), "")
    assert result.state == state
    assert words in result.message
    # the text alone decides, whatever the exit code
    assert gpu.classify_error(1, "", fixture(name)).state == state


@pytest.mark.parametrize(
    "returncode, state",
    [
        (9, "no_driver"),
        (12, "no_driver"),
        (6, "no_gpu"),
        (15, "gpu_lost"),
        (18, "driver_library_mismatch"),
        (2, "error"),
    ],
)
def test_classify_by_return_code_when_text_is_unknown(returncode, state):
    result = gpu.classify_error(returncode, "", "something new")
    assert result.state == state
    assert "exited with %d" % returncode in result.message


def test_classify_ok_and_missing_binary():
    assert gpu.classify_error(0, fixture("h100-sxm5-80gb.query-gpu.csv"), "") == gpu.GpuState("ok", "")
    missing = gpu.classify_error(127, "", "", nvidia_smi_present=False)
    assert missing.state == "no_driver" and "not installed" in missing.message


# --------------------------------------------------------------------------
# The vllm_gpu fact
# --------------------------------------------------------------------------


def test_summarize_hgx_h100():
    (h100,) = parse("h100-sxm5-80gb.query-gpu.csv")
    gpus = [dict(h100, index=i) for i in range(8)]
    facts = gpu.summarize(gpus, cuda_version="13.1", nvlink=True, nvswitch_count=4)
    assert facts["state"] == "ok" and facts["count"] == 8
    assert facts["names"] == ["NVIDIA H100 80GB HBM3"] * 8
    assert facts["memory_usable_bytes"] == [81081 * MIB] * 8
    assert facts["driver_version"] == "590.48.01" and facts["cuda_version"] == "13.1"
    assert facts["compute_capability"] == "9.0"
    assert facts["persistence_mode"] is True and facts["mig_enabled"] is False
    assert facts["nvlink"] is True and facts["nvswitch"] is True
    assert facts["fabric_manager_required"] is True and facts["fabric_ready"] is True


def test_summarize_fabric_state_alone_reveals_nvswitch():
    # The recorded H100 is a VM slice of an HGX board: no NVSwitch on its PCI bus,
    # but the GPU reports a completed NVSwitch fabric registration.
    facts = gpu.summarize(parse("h100-sxm5-80gb.query-gpu.csv"))
    assert facts["nvswitch"] is True and facts["nvswitch_count"] == 0
    pending = dict(parse("h100-sxm5-80gb.query-gpu.csv")[0], fabric_state="In Progress")
    assert gpu.summarize([pending])["fabric_ready"] is False


def test_summarize_pcie_cards():
    gpus = parse("l40s.query-gpu.csv") + parse("rtx-4080-super.query-gpu.csv")
    facts = gpu.summarize(gpus)
    assert facts["nvswitch"] is False and facts["fabric_manager_required"] is False
    assert facts["fabric_ready"] is None
    assert facts["persistence_mode"] is False and facts["mig_enabled"] is False
    assert facts["compute_capability"] == "8.9"


def test_summarize_lowest_compute_capability_and_mig():
    gpus = parse("h100-mig.query-gpu.csv") + parse("l40s.query-gpu.csv")
    facts = gpu.summarize(gpus)
    assert facts["compute_capability"] == "8.9"
    assert facts["mig_enabled"] is True


def test_summarize_error_state():
    state = gpu.classify_error(18, fixture("error-driver-library-mismatch.txt"), "")
    facts = gpu.summarize([], state=state)
    assert facts["state"] == "driver_library_mismatch" and facts["count"] == 0
    assert facts["names"] == [] and facts["driver_version"] is None
    assert facts["persistence_mode"] is False and facts["compute_capability"] is None


# --------------------------------------------------------------------------
# Orchestration: replaying recorded outputs through a fake runner
# --------------------------------------------------------------------------


class FakeNvidiaSmi:
    """Answers nvidia-smi invocations with recorded outputs."""

    def __init__(
        self,
        query,
        table="h100-sxm5-80gb.nvidia-smi.txt",
        topo="h100-sxm5-80gb.topo-m.txt",
        nvlink="h100-sxm5-80gb.nvlink-s.txt",
        reject=(),
    ):
        self.query, self.table, self.topo, self.nvlink = query, table, topo, nvlink
        self.reject = list(reject)
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        if argv[1:2] and argv[1].startswith("--query-gpu="):
            asked = argv[1].split("=", 1)[1].split(",")
            for field in self.reject:
                if field in asked:
                    return 2, 'Field "%s" is not a valid field to query.\n\n' % field, ""
            return self.query
        if argv[1:] == ["topo", "-m"]:
            return 0, fixture(self.topo), ""
        if argv[1:] == ["nvlink", "-s"]:
            return 0, fixture(self.nvlink), ""
        return 0, fixture(self.table), ""


def test_collect_with_nvidia_smi_drops_fields_an_old_driver_rejects(tmp_path):
    run = FakeNvidiaSmi((0, fixture("h100-sxm5-80gb.query-gpu.csv"), ""), reject=["fabric.state", "compute_cap"])
    facts = gpu.collect_with_nvidia_smi(run, "/usr/bin/nvidia-smi", pci_root=str(tmp_path))
    queries = [call[1] for call in run.calls if call[1:2] and call[1].startswith("--query-gpu=")]
    assert len(queries) == 3
    assert "compute_cap" not in queries[-1] and "fabric.state" not in queries[-1]
    assert facts["state"] == "ok" and facts["count"] == 1
    assert facts["cuda_version"] == "13.1"
    assert facts["nvlink"] is True  # 18 active links, though topo -m shows a single GPU


def test_collect_with_nvidia_smi_reports_broken_driver():
    run = FakeNvidiaSmi((18, fixture("error-driver-library-mismatch-570.txt"), ""))
    facts = gpu.collect_with_nvidia_smi(run, "/usr/bin/nvidia-smi")
    assert facts["state"] == "driver_library_mismatch" and facts["count"] == 0
    assert len(run.calls) == 1  # nothing else is asked of a broken driver


def test_collect_with_nvidia_smi_without_binary_or_rows():
    assert gpu.collect_with_nvidia_smi(FakeNvidiaSmi(None), None)["state"] == "no_driver"
    header_only = (0, "index, name, memory.total [MiB]\n", "")
    assert gpu.collect_with_nvidia_smi(FakeNvidiaSmi(header_only), "nvidia-smi", topology=False)["state"] == "no_gpu"


def test_collect_with_nvidia_smi_pcie_host(tmp_path):
    run = FakeNvidiaSmi(
        (0, fixture("l40s.query-gpu.csv"), ""),
        table="l40s.nvidia-smi.txt",
        topo="l40s.topo-m.txt",
        nvlink="l40s.nvlink-s.txt",
    )
    facts = gpu.collect_with_nvidia_smi(run, "nvidia-smi", pci_root=str(tmp_path))
    assert facts["cuda_version"] == "13.2"
    assert facts["nvlink"] is False and facts["nvswitch"] is False


# --------------------------------------------------------------------------
# NVML path, against a stand-in for pynvml (values of the recorded H100)
# --------------------------------------------------------------------------


class FakeNVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


class FakeFabricInfo(ctypes.Structure):
    _fields_ = [("state", ctypes.c_uint)]


class FakeNvml:
    """The slice of pynvml's API the collector uses; errors carry NVML return codes."""

    NVMLError = FakeNVMLError
    NVML_NVLINK_MAX_LINKS = 18
    nvmlMemory_v2 = 0x02000028

    def nvmlInit(self):
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        assert version == self.nvmlMemory_v2
        return SimpleNamespace(total=81559 * MIB, reserved=479 * MIB, used=0, free=81081 * MIB)

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle):
        return "GPU-00000000-0000-0000-0000-000000000000"

    def nvmlDeviceGetPciInfo(self, handle):
        return SimpleNamespace(busId=b"00000000:00:09.0")

    def nvmlSystemGetDriverVersion(self):
        return "590.48.01"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13010

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return (9, 0)

    def nvmlDeviceGetMigMode(self, handle):
        return (0, 0)

    def nvmlDeviceGetPersistenceMode(self, handle):
        return 1

    def __init__(self, init_error=None, links=18, fabric_state=None):
        self.init_error, self.links, self.fabric_state, self.shut_down = init_error, links, fabric_state, False

    c_nvmlGpuFabricInfo_t = FakeFabricInfo

    def nvmlDeviceGetGpuFabricInfo(self, handle, info):
        if self.fabric_state is None:
            raise FakeNVMLError(3)  # NVML_ERROR_NOT_SUPPORTED
        info._obj.state = self.fabric_state

    def nvmlDeviceGetNvLinkState(self, handle, link):
        if link >= self.links:
            raise FakeNVMLError(2)
        return 1


def test_collect_with_nvml_matches_the_nvidia_smi_fact():
    nvml = FakeNvml()
    facts = gpu.collect_with_nvml(nvml)
    (from_csv,) = parse("h100-sxm5-80gb.query-gpu.csv")
    (from_nvml,) = facts["gpus"]
    for key in (
        "name",
        "uuid",
        "pci_bus_id",
        "memory_total_bytes",
        "memory_reserved_bytes",
        "memory_usable_bytes",
        "driver_version",
        "compute_capability",
        "mig_enabled",
        "persistence_mode",
    ):
        assert from_nvml[key] == from_csv[key], key
    assert facts["source"] == "nvml" and facts["cuda_version"] == "13.1"
    assert facts["nvlink"] is True and nvml.shut_down


def test_collect_with_nvml_fabric_state():
    facts = gpu.collect_with_nvml(FakeNvml(fabric_state=3))  # NVML_GPU_FABRIC_STATE_COMPLETED
    assert facts["gpus"][0]["fabric_state"] == "Completed"
    assert facts["nvswitch"] is True and facts["fabric_ready"] is True
    assert gpu.collect_with_nvml(FakeNvml(links=0))["nvlink"] is False


@pytest.mark.parametrize(
    "code, state, words",
    [(9, "no_driver", "kernel module"), (18, "driver_library_mismatch", "Reboot"), (999, "error", "NVML error")],
)
def test_collect_with_nvml_init_errors(code, state, words):
    facts = gpu.collect_with_nvml(FakeNvml(init_error=code))
    assert facts["state"] == state and facts["count"] == 0
    assert words in facts["message"]


def test_import_nvml_is_optional(monkeypatch):
    # Not installed (sys.modules[name] = None makes the import fail): None, no error.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu.import_nvml() is None
    # Installed: that module, whatever else is around.
    fake = SimpleNamespace(nvmlInit=lambda: None)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu.import_nvml() is fake


# --------------------------------------------------------------------------
# Recorded by this project on a real H100 (one GPU in a VM); see SOURCES.md
# --------------------------------------------------------------------------

VM = "h100-80gb-hbm3-vm"
#: torch.cuda.mem_get_info(0)[1] on that machine, in the same session.
VM_TORCH_TOTAL_BYTES = 85017493504


def test_recorded_h100_vm_usable_memory_is_what_cuda_reports():
    (card,) = parse(VM + ".query-gpu.csv")
    assert card["memory_total_bytes"] == 81559 * MIB and card["memory_reserved_bytes"] == 480 * MIB
    assert card["memory_usable_bytes"] == VM_TORCH_TOTAL_BYTES == 81079 * MIB
    assert card["fabric_state"] is None and card["persistence_mode"] is True and card["mig_enabled"] is False


def test_recorded_h100_vm_collect_with_nvidia_smi(tmp_path):
    run = FakeNvidiaSmi((0, fixture(VM + ".query-gpu.csv"), ""), table=VM + ".nvidia-smi.txt",
                        topo=VM + ".topo-m.txt", nvlink=VM + ".nvlink-s.txt")
    facts = gpu.collect_with_nvidia_smi(run, "nvidia-smi", pci_root=str(tmp_path))
    assert facts["state"] == "ok" and facts["count"] == 1 and facts["names"] == ["NVIDIA H100 80GB HBM3"]
    assert (facts["driver_version"], facts["cuda_version"], facts["compute_capability"]) == ("580.159.04", "13.0", "9.0")
    # The VM sees no NVLink (empty `nvlink -s`, a one-GPU matrix) and no fabric: a plain PCIe-attached view.
    assert facts["nvlink"] is False and facts["nvswitch"] is False and facts["fabric_ready"] is None
    assert gpu.parse_cuda_version(fixture(VM + ".nvidia-smi-q.txt")) == "13.0"
    assert gpu.parse_cuda_version(fixture(VM + ".version.txt")) == "13.0"
    assert gpu.parse_topology_matrix(fixture(VM + ".topo-m.txt"))["gpu_count"] == 1
