"""Parse what ``nvidia-smi`` (or NVML) says about a host's GPUs.

Plain functions only, standard library only: this module is shipped to managed
nodes as Ansible ``module_utils`` (``plugins/module_utils/vllm_fleet`` links to
this package) for the ``vllm_gpu_facts`` module, and imported as
``vllm_fleet.gpu_facts`` by the unit tests and ``python -m vllm_fleet.gpu_plan``. Every parser is tested against outputs recorded on real
machines (``tests/fixtures/nvidia-smi``).

The fact dictionary built by :func:`summarize` is the contract with the rest of
the project (the ``vllm_gpu`` Ansible fact and the planner's GPU input).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

MIB = 1024 * 1024

#: Fields asked of ``nvidia-smi --query-gpu``. The parser reads the CSV header,
#: so the order here only decides the column order of the output.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "uuid",
    "pci.bus_id",
    "memory.total",
    "memory.reserved",
    "memory.used",
    "memory.free",
    "driver_version",
    "compute_cap",
    "mig.mode.current",
    "persistence_mode",
    "fabric.state",
    "fabric.status",
)

#: Fields an older driver may not know. ``compute_cap`` needs driver >= 510;
#: ``memory.reserved`` and ``fabric.*`` are newer still. When nvidia-smi answers
#: 'Field "x" is not a valid field to query.' the caller drops ``x`` and asks again.
OPTIONAL_QUERY_FIELDS: tuple[str, ...] = (
    "memory.reserved",
    "compute_cap",
    "fabric.state",
    "fabric.status",
)

#: ``fabric.state`` values that only a GPU attached to an NVSwitch fabric reports
#: (Hopper and newer register with the fabric manager; others say N/A).
NVSWITCH_FABRIC_STATES = ("Not Started", "In Progress", "Completed")

NVIDIA_PCI_VENDOR = "0x10de"
#: PCI class "Bridge: other" (0x0680): how NVSwitch chips enumerate on HGX boards.
NVSWITCH_PCI_CLASS_PREFIX = "0x0680"

STATE_OK = "ok"
STATE_NO_DRIVER = "no_driver"
STATE_NO_GPU = "no_gpu"
STATE_DRIVER_LIBRARY_MISMATCH = "driver_library_mismatch"
STATE_GPU_LOST = "gpu_lost"
STATE_ERROR = "error"

# NVML return codes (nvmlReturn_t); nvidia-smi exits with the code of the failing call.
_STATE_BY_NVML_CODE = {
    6: STATE_NO_GPU,  # NVML_ERROR_NOT_FOUND
    9: STATE_NO_DRIVER,  # NVML_ERROR_DRIVER_NOT_LOADED
    12: STATE_NO_DRIVER,  # NVML_ERROR_LIBRARY_NOT_FOUND
    15: STATE_GPU_LOST,  # NVML_ERROR_GPU_IS_LOST
    18: STATE_DRIVER_LIBRARY_MISMATCH,  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
}

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*([0-9]+\.[0-9]+)")
_INVALID_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')
_NVLINK_TOKEN = re.compile(r"^NV([0-9]+)$")
_NVLINK_LINK = re.compile(r"^\s*Link\s+([0-9]+):\s*(.+?)\s*$")
_NVML_LIBRARY_VERSION = re.compile(r"NVML library version:\s*(\S+)")


@dataclass(frozen=True)
class GpuState:
    """Outcome of a GPU probe: a machine-readable ``state`` and a message for humans."""

    state: str
    message: str


def query_gpu_command(nvidia_smi: str, fields: Sequence[str] = QUERY_FIELDS) -> list[str]:
    """Return the argv that asks nvidia-smi for ``fields`` as CSV with a header."""
    return [nvidia_smi, "--query-gpu=" + ",".join(fields), "--format=csv"]


def invalid_query_field(output: str) -> str | None:
    """Return the field nvidia-smi rejected as 'not a valid field to query', if any."""
    match = _INVALID_FIELD.search(output)
    return match.group(1) if match else None


def _is_missing(value: str) -> bool:
    # nvidia-smi writes "[N/A]", "[Not Supported]", "[Unknown Error]",
    # "[Requested functionality has been deprecated]"... and sometimes plain "N/A".
    return value == "" or value == "N/A" or (value.startswith("[") and value.endswith("]"))


def _to_bytes(value: str) -> int | None:
    if _is_missing(value):
        return None
    number = value.split()[0]
    try:
        return int(number) * MIB
    except ValueError:
        return None


def _to_int(value: str) -> int | None:
    if _is_missing(value):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _to_bool(value: str) -> bool | None:
    if value == "Enabled":
        return True
    if value == "Disabled":
        return False
    return None


def _to_str(value: str) -> str | None:
    return None if _is_missing(value) else value


_COLUMNS = {
    # nvidia-smi header name (units stripped) -> (output key, converter)
    "index": ("index", _to_int),
    "name": ("name", _to_str),
    "uuid": ("uuid", _to_str),
    "pci.bus_id": ("pci_bus_id", _to_str),
    "memory.total": ("memory_total_bytes", _to_bytes),
    "memory.reserved": ("memory_reserved_bytes", _to_bytes),
    "memory.used": ("memory_used_bytes", _to_bytes),
    "memory.free": ("memory_free_bytes", _to_bytes),
    "driver_version": ("driver_version", _to_str),
    "compute_cap": ("compute_capability", _to_str),
    "mig.mode.current": ("mig_enabled", _to_bool),
    "persistence_mode": ("persistence_mode", _to_bool),
    "fabric.state": ("fabric_state", _to_str),
    "fabric.status": ("fabric_status", _to_str),
}


def usable_memory_bytes(gpu: Mapping[str, Any]) -> int | None:
    """Memory CUDA can allocate on ``gpu`` (what ``cudaMemGetInfo`` calls total).

    ``used + free`` is right for every driver: drivers from R510 on report the
    full board size as ``memory.total`` and the firmware/driver share as
    ``memory.reserved``; older ones already left the reservation out of the total.
    On the recorded H100 (81559 MiB total, 479 MiB reserved) this gives
    81081 MiB = 79.18 GiB, the figure vLLM logs for the same card.
    """
    used = gpu.get("memory_used_bytes")
    free = gpu.get("memory_free_bytes")
    if used is not None and free is not None:
        return used + free
    total = gpu.get("memory_total_bytes")
    reserved = gpu.get("memory_reserved_bytes")
    if total is not None and reserved is not None:
        return total - reserved
    return None


def parse_query_gpu_csv(text: str) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=... --format=csv`` output (header required).

    Columns are matched by their header names, so any subset and order of the
    known fields works, unknown columns are ignored, and ``nounits`` output is
    accepted too. Memory becomes bytes, Enabled/Disabled becomes a bool and
    bracketed placeholders such as ``[N/A]`` become ``None``. Lines that are not
    CSV rows of the header's width (an error line printed for one lost GPU, for
    example) are skipped.
    """
    rows = [row for row in csv.reader(text.strip().splitlines(), skipinitialspace=True) if row]
    if not rows:
        return []
    header = [column.split(" [")[0].strip() for column in rows[0]]
    if not any(name in _COLUMNS for name in header):
        raise ValueError("nvidia-smi CSV output has no recognised header: %r" % rows[0])
    gpus = []
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        gpu: dict[str, Any] = {key: None for key, _ in _COLUMNS.values()}
        for column, raw in zip(header, row):
            if column in _COLUMNS:
                key, convert = _COLUMNS[column]
                gpu[key] = convert(raw.strip())
        gpu["memory_usable_bytes"] = usable_memory_bytes(gpu)
        gpus.append(gpu)
    return gpus


def parse_cuda_version(text: str) -> str | None:
    """Return the CUDA version the driver supports, e.g. ``"13.1"``.

    Understands the banner of plain ``nvidia-smi`` ("CUDA Version: 13.1"), the
    ``nvidia-smi -q`` line and ``nvidia-smi --version``. ``None`` when absent or
    reported as "Not Found".
    """
    match = _CUDA_VERSION.search(text)
    return match.group(1) if match else None


def parse_topology_matrix(text: str) -> dict[str, Any]:
    """Read the GPU-to-GPU part of ``nvidia-smi topo -m``.

    Returns ``gpu_count`` (GPUs in the matrix), ``links`` mapping "i-j" (i < j) to
    the connection type ("NV18", "SYS", "PIX"...), ``nvlink_pairs`` (pairs joined
    by NVLink) and ``nvlink`` (any pair joined by NVLink). Works with tab- or
    space-separated output and ignores the underline escape codes nvidia-smi
    prints on a terminal.
    """
    lines = [_ANSI_ESCAPE.sub("", line) for line in text.splitlines()]
    header = next((line.split() for line in lines if re.match(r"^\s+GPU0\b", line)), None)
    if header is None:
        return {"gpu_count": 0, "links": {}, "nvlink_pairs": 0, "nvlink": False}
    gpu_columns = [cell for cell in header if re.match(r"^GPU[0-9]+$", cell)]
    links: dict[str, str] = {}
    for line in lines:
        cells = line.split()
        if not cells or not re.match(r"^GPU([0-9]+)$", cells[0]):
            continue
        row = int(cells[0][3:])
        for column, cell in enumerate(cells[1 : 1 + len(gpu_columns)]):
            if column > row:
                links["%d-%d" % (row, column)] = cell
    nvlink_pairs = sum(1 for cell in links.values() if _NVLINK_TOKEN.match(cell))
    return {
        "gpu_count": len(gpu_columns),
        "links": links,
        "nvlink_pairs": nvlink_pairs,
        "nvlink": nvlink_pairs > 0,
    }


def parse_nvlink_status(text: str) -> dict[str, Any]:
    """Read ``nvidia-smi nvlink -s``: active links per GPU index and in total.

    A GPU without NVLink prints "Device does not have or support Nvlink"; in MIG
    mode nvidia-smi refuses the query. Both count as zero active links.
    """
    per_gpu: dict[int, int] = {}
    current: int | None = None
    for line in text.splitlines():
        gpu = re.match(r"^GPU\s+([0-9]+):", line)
        if gpu:
            current = int(gpu.group(1))
            per_gpu[current] = 0
            continue
        link = _NVLINK_LINK.match(line)
        if link and current is not None and "inactive" not in link.group(2).lower():
            per_gpu[current] += 1
    total = sum(per_gpu.values())
    return {"active_links": per_gpu, "active_links_total": total, "nvlink": total > 0}


def count_nvswitches(pci_devices: Iterable[tuple[str, str]]) -> int:
    """Count NVSwitch chips among ``(vendor, class)`` pairs as sysfs spells them."""
    return sum(
        1
        for vendor, pci_class in pci_devices
        if vendor.strip().lower() == NVIDIA_PCI_VENDOR
        and pci_class.strip().lower().startswith(NVSWITCH_PCI_CLASS_PREFIX)
    )


def read_pci_devices(root: str = "/sys/bus/pci/devices") -> list[tuple[str, str]]:
    """Return ``(vendor, class)`` for every PCI device under ``root`` (sysfs)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    devices = []
    for name in names:
        try:
            devices.append((_read(os.path.join(root, name, "vendor")), _read(os.path.join(root, name, "class"))))
        except OSError:
            continue
    return devices


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


_MESSAGES = {
    STATE_NO_DRIVER: (
        "nvidia-smi cannot talk to the NVIDIA driver: the kernel module is not loaded "
        "(not built for this kernel, blocked by nouveau, or not loaded since install)."
    ),
    STATE_NO_GPU: (
        "The NVIDIA driver is loaded but found no GPU it can drive (no GPU, a GPU this "
        "driver branch does not support, or a card that failed to initialise)."
    ),
    STATE_DRIVER_LIBRARY_MISMATCH: (
        "Driver/library version mismatch: the loaded kernel module and the user-space NVIDIA "
        "libraries differ, typically after a driver upgrade without a reboot. Reboot the host "
        "(or unload and reload the nvidia kernel modules)."
    ),
    STATE_GPU_LOST: (
        "A GPU has fallen off the bus or is otherwise unreachable. Reboot the host; if it "
        "happens again check power, cooling and seating of the card."
    ),
}


def classify_error(returncode: int, stdout: str, stderr: str, nvidia_smi_present: bool = True) -> GpuState:
    """Turn an nvidia-smi exit into a state and an actionable message.

    The text decides first (it names the cause); the exit code, which nvidia-smi
    takes from NVML's return code, is the fallback. A "device handle" error is
    reported even when the exit code is 0, because the other GPUs may still answer.
    """
    if not nvidia_smi_present:
        return GpuState(STATE_NO_DRIVER, "nvidia-smi is not installed (or not on PATH): no NVIDIA driver on this host.")
    text = "\n".join(part for part in (stdout, stderr) if part)
    # Some copies of the message use a typographic apostrophe in "couldn't".
    lowered = text.lower().replace("\u2018", "'").replace("\u2019", "'")
    if "version mismatch" in lowered:
        library = _NVML_LIBRARY_VERSION.search(text)
        suffix = " NVML library version: %s." % library.group(1) if library else ""
        return GpuState(STATE_DRIVER_LIBRARY_MISMATCH, _MESSAGES[STATE_DRIVER_LIBRARY_MISMATCH] + suffix)
    lost = next((line.strip() for line in text.splitlines() if _is_lost_gpu_line(line.lower())), None)
    if lost:
        return GpuState(STATE_GPU_LOST, '%s nvidia-smi said: "%s"' % (_MESSAGES[STATE_GPU_LOST], lost))
    if "couldn't communicate with the nvidia driver" in lowered:
        return GpuState(STATE_NO_DRIVER, _MESSAGES[STATE_NO_DRIVER])
    if "no devices were found" in lowered:
        return GpuState(STATE_NO_GPU, _MESSAGES[STATE_NO_GPU])
    if returncode == 0:
        return GpuState(STATE_OK, "")
    state = _STATE_BY_NVML_CODE.get(returncode, STATE_ERROR)
    return GpuState(state, "nvidia-smi exited with %d: %s" % (returncode, text.strip() or "no output"))


def _is_lost_gpu_line(line: str) -> bool:
    return "gpu is lost" in line or "fallen off the bus" in line or "unable to determine the device handle" in line


def _first(values: Iterable[Any]) -> Any:
    return next((value for value in values if value is not None), None)


def _capability_key(capability: str) -> tuple[int, ...]:
    return tuple(int(part) for part in capability.split("."))


def summarize(
    gpus: Sequence[Mapping[str, Any]],
    state: GpuState = GpuState(STATE_OK, ""),
    cuda_version: str | None = None,
    nvlink: bool = False,
    nvswitch_count: int = 0,
    source: str = "nvidia-smi",
) -> dict[str, Any]:
    """Build the ``vllm_gpu`` fact from parsed GPUs and what else was probed.

    Per-GPU values stay in ``gpus``; the top level answers host-wide questions:
    ``compute_capability`` is the lowest on the host (what kernels must support),
    ``mig_enabled`` is true if any GPU is in MIG mode and ``persistence_mode``
    only if every GPU has it. ``nvswitch`` is true when NVSwitch chips are on the
    PCI bus or a GPU reports an NVSwitch fabric state; such hosts need the
    NVIDIA fabric manager before GPUs can talk over NVLink.
    """
    gpu_list = [dict(gpu) for gpu in gpus]
    capabilities = [gpu["compute_capability"] for gpu in gpu_list if gpu.get("compute_capability")]
    persistence = [gpu.get("persistence_mode") for gpu in gpu_list]
    fabric_states = [gpu.get("fabric_state") for gpu in gpu_list]
    nvswitch = nvswitch_count > 0 or any(fabric in NVSWITCH_FABRIC_STATES for fabric in fabric_states)
    fabric_ready: bool | None = None
    if any(fabric in NVSWITCH_FABRIC_STATES for fabric in fabric_states):
        fabric_ready = all(
            gpu.get("fabric_state") == "Completed" and gpu.get("fabric_status") in (None, "Success") for gpu in gpu_list
        )
    return {
        "state": state.state,
        "message": state.message,
        "source": source,
        "count": len(gpu_list),
        "names": [gpu.get("name") for gpu in gpu_list],
        "memory_total_bytes": [gpu.get("memory_total_bytes") for gpu in gpu_list],
        "memory_free_bytes": [gpu.get("memory_free_bytes") for gpu in gpu_list],
        "memory_usable_bytes": [gpu.get("memory_usable_bytes") for gpu in gpu_list],
        "driver_version": _first(gpu.get("driver_version") for gpu in gpu_list),
        "cuda_version": cuda_version,
        "compute_capability": min(capabilities, key=_capability_key) if capabilities else None,
        "mig_enabled": any(gpu.get("mig_enabled") for gpu in gpu_list),
        "persistence_mode": bool(persistence) and all(persistence),
        "nvlink": nvlink,
        "nvswitch": nvswitch,
        "nvswitch_count": nvswitch_count,
        "fabric_manager_required": nvswitch,
        "fabric_ready": fabric_ready,
        "gpus": gpu_list,
    }


def collect_with_nvidia_smi(
    run: Callable[[list[str]], tuple[int, str, str]],
    nvidia_smi: str | None,
    topology: bool = True,
    pci_root: str = "/sys/bus/pci/devices",
) -> dict[str, Any]:
    """Probe the GPUs with nvidia-smi and return the ``vllm_gpu`` fact.

    ``run(argv)`` returns ``(returncode, stdout, stderr)`` (``module.run_command``
    in the Ansible module, ``subprocess`` in scripts). ``nvidia_smi`` is its path,
    ``None`` when it is not installed. Fields an older driver rejects are dropped
    one by one. Never raises for GPU trouble: the fact's ``state`` says what is wrong.
    """
    if not nvidia_smi:
        return summarize([], state=classify_error(127, "", "", nvidia_smi_present=False))
    fields = list(QUERY_FIELDS)
    while True:
        returncode, stdout, stderr = run(query_gpu_command(nvidia_smi, fields))
        rejected = invalid_query_field(stdout + stderr)
        if rejected not in fields or rejected not in OPTIONAL_QUERY_FIELDS:
            break
        fields.remove(rejected)
    state = classify_error(returncode, stdout, stderr)
    try:
        gpus = parse_query_gpu_csv(stdout)
    except ValueError:
        gpus = []
    if state.state == STATE_OK and not gpus:
        state = GpuState(STATE_NO_GPU, _MESSAGES[STATE_NO_GPU])
    if state.state != STATE_OK:
        return summarize(gpus, state=state)
    cuda_version = parse_cuda_version(run([nvidia_smi])[1])
    nvlink = False
    nvswitch_count = 0
    if topology:
        returncode, stdout, _ = run([nvidia_smi, "topo", "-m"])
        nvlink = returncode == 0 and parse_topology_matrix(stdout)["nvlink"]
        returncode, stdout, _ = run([nvidia_smi, "nvlink", "-s"])
        nvlink = nvlink or (returncode == 0 and parse_nvlink_status(stdout)["nvlink"])
        nvswitch_count = count_nvswitches(read_pci_devices(pci_root))
    return summarize(gpus, cuda_version=cuda_version, nvlink=nvlink, nvswitch_count=nvswitch_count)


# --------------------------------------------------------------------------
# NVML (nvidia-ml-py) path: same dictionaries, without running nvidia-smi.
# --------------------------------------------------------------------------

_FABRIC_STATE_NAMES = {0: None, 1: "Not Started", 2: "In Progress", 3: "Completed"}


def import_nvml() -> Any:
    """Return the ``pynvml`` module from nvidia-ml-py, or ``None`` if not importable."""
    try:
        import pynvml  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_optional(call: Any, nvml: Any) -> Any:
    try:
        return call()
    except nvml.NVMLError:
        return None


def _nvml_gpu(nvml: Any, index: int) -> tuple[dict[str, Any], int]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    if hasattr(nvml, "nvmlMemory_v2"):
        memory = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
    else:
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    capability = _nvml_optional(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle), nvml)
    mig = _nvml_optional(lambda: nvml.nvmlDeviceGetMigMode(handle), nvml)
    persistence = _nvml_optional(lambda: nvml.nvmlDeviceGetPersistenceMode(handle), nvml)
    fabric = _nvml_optional(lambda: _nvml_fabric_state(nvml, handle), nvml)
    gpu: dict[str, Any] = {
        "index": index,
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
        "memory_total_bytes": int(memory.total),
        "memory_reserved_bytes": int(memory.reserved) if hasattr(memory, "reserved") else None,
        "memory_used_bytes": int(memory.used),
        "memory_free_bytes": int(memory.free),
        "driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
        "compute_capability": "%d.%d" % tuple(capability) if capability else None,
        "mig_enabled": bool(mig[0]) if mig else None,
        "persistence_mode": bool(persistence) if persistence is not None else None,
        "fabric_state": fabric,
        "fabric_status": None,
    }
    gpu["memory_usable_bytes"] = usable_memory_bytes(gpu)
    return gpu, _nvml_active_links(nvml, handle)


def _nvml_fabric_state(nvml: Any, handle: Any) -> str | None:
    import ctypes  # pylint: disable=import-outside-toplevel

    info = nvml.c_nvmlGpuFabricInfo_t()
    nvml.nvmlDeviceGetGpuFabricInfo(handle, ctypes.byref(info))
    return _FABRIC_STATE_NAMES.get(int(info.state))


def _nvml_active_links(nvml: Any, handle: Any) -> int:
    active = 0
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link):
                active += 1
        except nvml.NVMLError:
            break
    return active


def _nvml_error_state(error: Exception) -> GpuState:
    state = _STATE_BY_NVML_CODE.get(getattr(error, "value", None), STATE_ERROR)
    return GpuState(state, _MESSAGES.get(state, "NVML error: %s" % error))


def collect_with_nvml(nvml: Any, nvswitch_count: int = 0) -> dict[str, Any]:
    """Probe GPUs through NVML (``nvml`` is the pynvml module) and summarize them."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return summarize([], state=_nvml_error_state(error), source="nvml")
    try:
        results = [_nvml_gpu(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
        cuda = _nvml_optional(nvml.nvmlSystemGetCudaDriverVersion, nvml)
    except nvml.NVMLError as error:
        return summarize([], state=_nvml_error_state(error), source="nvml")
    finally:
        nvml.nvmlShutdown()
    gpus = [gpu for gpu, _ in results]
    if not gpus:
        return summarize([], state=GpuState(STATE_NO_GPU, _MESSAGES[STATE_NO_GPU]), source="nvml")
    return summarize(
        gpus,
        cuda_version="%d.%d" % (cuda // 1000, (cuda % 1000) // 10) if cuda else None,
        nvlink=any(links for _, links in results),
        nvswitch_count=nvswitch_count,
        source="nvml",
    )
