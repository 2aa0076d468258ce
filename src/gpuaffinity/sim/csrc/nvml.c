/* A simulated libnvidia-ml.so.1: the NVML calls that pynvml, torch and Ray
 * use to enumerate GPUs, identify them and ask for their CPU and memory
 * affinity, answering from the machine described in GPUAFFINITY_SIM_CONFIG.
 * Return codes and string formats follow driver 580.159.04 where measured.
 * Every other NVML entry point is absent, so callers see "function not
 * found" (pynvml: NVMLError_FunctionNotFound) as they would with an old
 * driver.  NVML ignores CUDA_VISIBLE_DEVICES, and so does this library.
 * Like the real one, it numbers only the GPUs this process can open (see
 * sim_common.h: GPUAFFINITY_DEV_ROOT), in PCI order: a GPU it cannot open has
 * no index, and a lookup by its bus id or UUID is NOT_FOUND (measured).
 * The processes with a CUDA context on each GPU (nvmlDeviceGetComputeRunningProcesses) are the
 * config's proc lines: the topology's [[running]] processes, whoever asks. */
#include "sim_common.h"

#include <stddef.h>
#include <stdint.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

enum { NVML_AFFINITY_SCOPE_NODE = 0, NVML_AFFINITY_SCOPE_SOCKET = 1 };
enum { NVML_BRAND_TESLA = 2 };

#define NVML_PCI_INFO_EXT_V1 0x1000040u
#define NVML_MEMORY_V2 0x02000028u
#define NVML_ARCH_UNKNOWN 0xffffffffu
#define MIB (1024ULL * 1024ULL)

/* pynvml's nvmlPciInfo_t (what _v3 fills) */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

/* pynvml's nvmlPciInfo_v2_t: the legacy layout of nvmlDeviceGetPciInfo and _v2 */
typedef struct {
    char busId[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    unsigned int reserved0, reserved1, reserved2, reserved3;
} nvmlPciInfo_v2_t;

typedef struct {
    unsigned int version, domain, bus, device, pciDeviceId, pciSubSystemId, baseClass, subClass;
    char busId[32];
} nvmlPciInfoExt_v1_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

/* ---- library state ----------------------------------------------------- */

static pthread_mutex_t nv_lock = PTHREAD_MUTEX_INITIALIZER;
static int nv_refcount;
static sim_gpu *nv_open[SIM_MAX_GPUS]; /* the GPUs this process can open, in NVML order */
static int nv_nopen;

static void nv_after_fork_child(void) {
    sim_counters_reset_in_child();
    pthread_mutex_init(&nv_lock, NULL);
}

__attribute__((constructor)) static void init_name(void) {
    sim_lib_name = "nvml";
    pthread_atfork(NULL, NULL, nv_after_fork_child);
}

static int nv_ready(void) { return __atomic_load_n(&nv_refcount, __ATOMIC_ACQUIRE) > 0; }

/* The first lines of every entry point: count, inject faults, require nvmlInit. */
#define NV_ENTER(name)                          \
    int code;                                   \
    if (sim_enter(name, &code)) return code;    \
    if (!nv_ready()) return NVML_ERROR_UNINITIALIZED

/* ---- handles ----------------------------------------------------------- */

/* Resolves a handle: a GPU (*mig left NULL) or a MIG instance; NULL when invalid. */
static sim_gpu *nv_handle(nvmlDevice_t dev, sim_mig **mig) {
    *mig = NULL;
    uintptr_t p = (uintptr_t)dev;
    uintptr_t lo = (uintptr_t)&sim_cfg.gpus[0];
    uintptr_t hi = (uintptr_t)&sim_cfg.gpus[sim_cfg.ngpus];
    if (!dev || p < lo || p >= hi) return NULL;
    size_t i = (size_t)(p - lo) / sizeof(sim_gpu);
    size_t off = (size_t)(p - lo) % sizeof(sim_gpu);
    sim_gpu *g = &sim_cfg.gpus[i];
    if (g->index < 0) return NULL; /* a GPU this process cannot open has no valid handle */
    if (off == 0) return g->magic == SIM_GPU_MAGIC ? g : NULL;
    size_t base = offsetof(sim_gpu, migs);
    if (off < base || (off - base) % sizeof(sim_mig)) return NULL;
    size_t j = (off - base) / sizeof(sim_mig);
    if (j >= (size_t)g->nmigs || g->migs[j].magic != SIM_MIG_MAGIC || !g->migs[j].usable) return NULL;
    *mig = &g->migs[j];
    return g;
}

/* Resolves a handle that must be a whole GPU; a MIG handle gives NULL. */
#define NV_GPU(g, dev)                                 \
    sim_mig *g##_mig;                                  \
    sim_gpu *g = nv_handle(dev, &g##_mig);             \
    if (!g || g##_mig) return NVML_ERROR_INVALID_ARGUMENT

/* Resolves any handle; a MIG handle gives its parent GPU in g and itself in g_mig. */
#define NV_ANY(g, dev)                                 \
    sim_mig *g##_mig;                                  \
    sim_gpu *g = nv_handle(dev, &g##_mig);             \
    if (!g) return NVML_ERROR_INVALID_ARGUMENT

static nvmlReturn_t nv_string(char *dst, unsigned int length, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ---- init and shutdown --------------------------------------------------- */

static nvmlReturn_t nv_init(void) {
    if (!sim_load()) return NVML_ERROR_DRIVER_NOT_LOADED;
    pthread_mutex_lock(&nv_lock);
    if (nv_refcount == 0) nv_nopen = sim_scan_access(nv_open); /* the real NVML opens every GPU here */
    __atomic_add_fetch(&nv_refcount, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&nv_lock);
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlInit(void) {
    int code;
    if (sim_enter("nvmlInit", &code)) return code;
    return nv_init();
}

SIM_EXPORT nvmlReturn_t nvmlInit_v2(void) {
    int code;
    if (sim_enter("nvmlInit_v2", &code)) return code;
    return nv_init();
}

SIM_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    int code;
    if (sim_enter("nvmlInitWithFlags", &code)) return code;
    (void)flags;
    return nv_init();
}

SIM_EXPORT nvmlReturn_t nvmlShutdown(void) {
    int code;
    if (sim_enter("nvmlShutdown", &code)) return code;
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&nv_lock);
    if (nv_refcount > 0)
        __atomic_sub_fetch(&nv_refcount, 1, __ATOMIC_RELEASE);
    else
        rc = NVML_ERROR_UNINITIALIZED; /* measured: a second shutdown returns 1 */
    pthread_mutex_unlock(&nv_lock);
    return rc;
}

static const struct {
    int code;
    const char *text;
} nv_errors[] = {
    {0, "Success"},
    {1, "Uninitialized"},
    {2, "Invalid Argument"},
    {3, "Not Supported"},
    {4, "Insufficient Permissions"},
    {5, "Already Initialized"},
    {6, "Not Found"},
    {7, "Insufficient Size"},
    {8, "Insufficient External Power"},
    {9, "Driver Not Loaded"},
    {10, "Timeout"},
    {11, "Interrupted by signal"},
    {12, "NVML Shared Library Not Found"},
    {13, "Function Not Found"},
    {14, "Corrupted infoROM"},
    {15, "GPU is lost"},
    {16, "GPU requires restart"},
    {17, "GPU access blocked by the operating system"},
    {18, "RM has detected an NVML/RM version mismatch"},
    {19, "In use by another client"},
    {999, "Unknown Error"},
};

/* Returns a string, so an injected fault cannot change its answer; it is counted. */
SIM_EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    int code;
    (void)sim_enter("nvmlErrorString", &code);
    for (size_t i = 0; i < sizeof nv_errors / sizeof nv_errors[0]; i++)
        if (nv_errors[i].code == result) return nv_errors[i].text;
    return "Unknown Error";
}

/* The simulator's own question, for tests: how often did this process call NAME? */
SIM_EXPORT long gpuaffinitySimCallCount(const char *name) { return sim_counter_value(name); }

/* ---- system ------------------------------------------------------------ */

SIM_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    NV_ENTER("nvmlSystemGetDriverVersion");
    return nv_string(version, length, sim_cfg.driver_version);
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    NV_ENTER("nvmlSystemGetNVMLVersion");
    return nv_string(version, length, sim_cfg.nvml_version);
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    NV_ENTER("nvmlSystemGetCudaDriverVersion");
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = sim_cfg.cuda_driver_version;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    NV_ENTER("nvmlSystemGetCudaDriverVersion_v2");
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = sim_cfg.cuda_driver_version;
    return NVML_SUCCESS;
}

/* ---- enumeration --------------------------------------------------------- */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) {
    NV_ENTER("nvmlDeviceGetCount");
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)nv_nopen;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    NV_ENTER("nvmlDeviceGetCount_v2");
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)nv_nopen;
    return NVML_SUCCESS;
}

static nvmlReturn_t nv_by_index(unsigned int index, nvmlDevice_t *device) {
    if (!device || index >= (unsigned)nv_nopen) return NVML_ERROR_INVALID_ARGUMENT; /* measured */
    *device = nv_open[index];
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    NV_ENTER("nvmlDeviceGetHandleByIndex");
    return nv_by_index(index, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    NV_ENTER("nvmlDeviceGetHandleByIndex_v2");
    return nv_by_index(index, device);
}

/* Measured: the full UUID, case-sensitive, with or without its "GPU-" tag;
 * prefixes, other cases, "gpu-" and trailing text are not found. */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    NV_ENTER("nvmlDeviceGetHandleByUUID");
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < nv_nopen; i++) {
        sim_gpu *g = nv_open[i];
        int untagged = !strncmp(g->uuid, "GPU-", 4) && !strcmp(g->uuid + 4, uuid);
        if (!strcmp(g->uuid, uuid) || untagged) {
            *device = g;
            return NVML_SUCCESS;
        }
        for (int j = 0; j < g->nmigs; j++) {
            if (g->migs[j].usable && !strcmp(g->migs[j].uuid, uuid)) {
                *device = &g->migs[j];
                return NVML_SUCCESS;
            }
        }
    }
    /* the older MIG form, "MIG-GPU-<gpu uuid>/<gi>/<ci>" (modelled from NVIDIA's docs, not measured) */
    if (!strncmp(uuid, "MIG-GPU-", 8)) {
        const char *slash = strchr(uuid, '/');
        unsigned gi, ci;
        char tail;
        if (slash && sscanf(slash, "/%u/%u%c", &gi, &ci, &tail) == 2) {
            for (int i = 0; i < nv_nopen; i++) {
                sim_gpu *g = nv_open[i];
                if (strlen(g->uuid) != (size_t)(slash - uuid - 4) || strncmp(g->uuid, uuid + 4, strlen(g->uuid)))
                    continue;
                for (int j = 0; j < g->nmigs; j++) {
                    if (g->migs[j].usable && g->migs[j].gi == gi && g->migs[j].ci == ci) {
                        *device = &g->migs[j];
                        return NVML_SUCCESS;
                    }
                }
            }
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* One hex field of 1..maxlen digits ending at one of `stops` (or the end). */
static int nv_hex_field(const char **p, int maxlen, const char *stops, unsigned int *out) {
    const char *s = *p;
    unsigned int v = 0;
    int n = 0;
    while (isxdigit((unsigned char)s[n])) {
        if (n == maxlen) return -1;
        int c = tolower((unsigned char)s[n]);
        v = v * 16 + (unsigned)(isdigit(c) ? c - '0' : c - 'a' + 10);
        n++;
    }
    if (!n || (s[n] && !strchr(stops, s[n]))) return -1;
    *out = v;
    *p = s + n;
    return 0;
}

/* "[DOMAIN:]BUS:DEVICE[.FUNCTION]", hex in either case (measured forms:
 * 00000000:00:06.0, 0000:00:06.0, 00:06.0, 00000000:00:06). */
static int nv_parse_bus_id(const char *text, unsigned int *dom, unsigned int *bus, unsigned int *dev,
                           unsigned int *fn) {
    int colons = 0;
    for (const char *q = text; *q; q++) colons += *q == ':';
    const char *p = text;
    *dom = 0;
    *fn = 0;
    if (colons == 2) {
        if (nv_hex_field(&p, 8, ":", dom)) return -1;
        p++;
    } else if (colons != 1) {
        return -1;
    }
    if (nv_hex_field(&p, 2, ":", bus) || *p != ':') return -1;
    p++;
    if (nv_hex_field(&p, 2, ".", dev)) return -1;
    if (*p == '.') {
        p++;
        if (nv_hex_field(&p, 1, "", fn)) return -1;
    }
    return *p ? -1 : 0;
}

static nvmlReturn_t nv_by_bus_id(const char *bus_id, nvmlDevice_t *device) {
    unsigned dom, bus, dev, fn;
    if (!bus_id || !device || nv_parse_bus_id(bus_id, &dom, &bus, &dev, &fn)) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < nv_nopen; i++) {
        sim_gpu *g = nv_open[i];
        if (g->domain == dom && g->bus == bus && g->device == dev && g->function == fn) {
            *device = g;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device) {
    NV_ENTER("nvmlDeviceGetHandleByPciBusId");
    return nv_by_bus_id(pciBusId, device);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device) {
    NV_ENTER("nvmlDeviceGetHandleByPciBusId_v2");
    return nv_by_bus_id(pciBusId, device);
}

/* ---- identity ------------------------------------------------------------ */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    NV_ENTER("nvmlDeviceGetUUID");
    NV_ANY(g, device);
    return nv_string(uuid, length, g_mig ? g_mig->uuid : g->uuid);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    NV_ENTER("nvmlDeviceGetName");
    NV_ANY(g, device);
    return nv_string(name, length, g_mig ? g_mig->name : g->name);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    NV_ENTER("nvmlDeviceGetIndex");
    NV_GPU(g, device);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)g->index;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber) {
    NV_ENTER("nvmlDeviceGetMinorNumber");
    NV_GPU(g, device);
    if (!minorNumber) return NVML_ERROR_INVALID_ARGUMENT;
    *minorNumber = (unsigned)g->minor;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length) {
    NV_ENTER("nvmlDeviceGetSerial");
    NV_ANY(g, device);
    char text[32];
    snprintf(text, sizeof text, "%llu", 1650000000000ULL + (unsigned long long)g->index);
    return nv_string(serial, length, text);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t device, int *type) {
    NV_ENTER("nvmlDeviceGetBrand");
    NV_ANY(g, device);
    if (!type) return NVML_ERROR_INVALID_ARGUMENT;
    *type = NVML_BRAND_TESLA;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    NV_ENTER("nvmlDeviceGetCudaComputeCapability");
    NV_ANY(g, device);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, unsigned int *arch) {
    NV_ENTER("nvmlDeviceGetArchitecture");
    NV_ANY(g, device);
    if (!arch) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned a = NVML_ARCH_UNKNOWN;
    if (g->cc_major == 7) a = g->cc_minor >= 5 ? 6 : 5; /* TURING : VOLTA */
    else if (g->cc_major == 8) a = g->cc_minor == 9 ? 8 : 7; /* ADA : AMPERE */
    else if (g->cc_major == 9) a = 9; /* HOPPER */
    else if (g->cc_major == 10 || g->cc_major == 12) a = 10; /* BLACKWELL */
    *arch = a;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, int *mode) {
    NV_ENTER("nvmlDeviceGetComputeMode");
    NV_ANY(g, device);
    (void)g;
    if (!mode) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = 0; /* NVML_COMPUTEMODE_DEFAULT */
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, int *mode) {
    NV_ENTER("nvmlDeviceGetPersistenceMode");
    NV_ANY(g, device);
    (void)g;
    if (!mode) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = 1; /* NVML_FEATURE_ENABLED */
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMultiGpuBoard(nvmlDevice_t device, unsigned int *multiGpuBool) {
    NV_ENTER("nvmlDeviceGetMultiGpuBoard");
    NV_ANY(g, device);
    (void)g;
    if (!multiGpuBool) return NVML_ERROR_INVALID_ARGUMENT;
    *multiGpuBool = 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetBoardId(nvmlDevice_t device, unsigned int *boardId) {
    NV_ENTER("nvmlDeviceGetBoardId");
    NV_ANY(g, device);
    if (!boardId) return NVML_ERROR_INVALID_ARGUMENT;
    *boardId = (unsigned)g->index;
    return NVML_SUCCESS;
}

/* ---- PCI ------------------------------------------------------------------ */

/* Measured: "00000000:00:06.0" and legacy "0000:00:06.0", upper-case hex. */
static void nv_bus_id(const sim_gpu *g, char *dst, size_t size, int legacy) {
    snprintf(dst, size, legacy ? "%04X:%02X:%02X.%X" : "%08X:%02X:%02X.%X", g->domain, g->bus, g->device,
             g->function);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    NV_ENTER("nvmlDeviceGetPciInfo_v3");
    NV_ANY(g, device);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    nv_bus_id(g, pci->busIdLegacy, sizeof pci->busIdLegacy, 1);
    nv_bus_id(g, pci->busId, sizeof pci->busId, 0);
    pci->domain = g->domain;
    pci->bus = g->bus;
    pci->device = g->device;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = g->pci_subsys_id;
    return NVML_SUCCESS;
}

static nvmlReturn_t nv_pci_legacy(nvmlDevice_t device, nvmlPciInfo_v2_t *pci) {
    NV_ANY(g, device);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    nv_bus_id(g, pci->busId, sizeof pci->busId, 1);
    pci->domain = g->domain;
    pci->bus = g->bus;
    pci->device = g->device;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = g->pci_subsys_id;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_v2_t *pci) {
    NV_ENTER("nvmlDeviceGetPciInfo");
    return nv_pci_legacy(device, pci);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_v2_t *pci) {
    NV_ENTER("nvmlDeviceGetPciInfo_v2");
    return nv_pci_legacy(device, pci);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetPciInfoExt(nvmlDevice_t device, nvmlPciInfoExt_v1_t *pci) {
    NV_ENTER("nvmlDeviceGetPciInfoExt");
    NV_ANY(g, device);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    if (pci->version != NVML_PCI_INFO_EXT_V1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memset(pci, 0, sizeof *pci);
    pci->version = NVML_PCI_INFO_EXT_V1;
    pci->domain = g->domain;
    pci->bus = g->bus;
    pci->device = g->device;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = g->pci_subsys_id;
    pci->baseClass = 3; /* display controller */
    pci->subClass = 2;  /* 3D controller */
    nv_bus_id(g, pci->busId, sizeof pci->busId, 0);
    return NVML_SUCCESS;
}

/* ---- memory ---------------------------------------------------------------- */

/* What the driver holds back on an idle device: small, never above the total. */
static unsigned long long nv_reserved(unsigned long long total) {
    unsigned long long r = 512 * MIB;
    return r < total / 8 ? r : total / 8;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    NV_ENTER("nvmlDeviceGetMemoryInfo");
    NV_ANY(g, device);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total = (g_mig ? g_mig->mem_mib : g->mem_mib) * MIB;
    memory->total = total;
    memory->used = nv_reserved(total);
    memory->free = total - memory->used;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    NV_ENTER("nvmlDeviceGetMemoryInfo_v2");
    NV_ANY(g, device);
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total = (g_mig ? g_mig->mem_mib : g->mem_mib) * MIB;
    memory->total = total;
    memory->reserved = nv_reserved(total);
    memory->used = 0;
    memory->free = total - memory->reserved;
    return NVML_SUCCESS;
}

/* ---- affinity (a MIG handle answers for its parent GPU) -------------------- */

static nvmlReturn_t nv_copy_mask(const unsigned long long *words, unsigned int size, unsigned long *out) {
    if (!out || !size) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < size; i++) out[i] = i < SIM_MASK_WORDS ? (unsigned long)words[i] : 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryAffinity(nvmlDevice_t device, unsigned int nodeSetSize,
                                                    unsigned long *nodeSet, int scope) {
    NV_ENTER("nvmlDeviceGetMemoryAffinity");
    NV_ANY(g, device);
    if (scope == NVML_AFFINITY_SCOPE_NODE) return nv_copy_mask(g->node_mem, nodeSetSize, nodeSet);
    if (scope == NVML_AFFINITY_SCOPE_SOCKET) return nv_copy_mask(g->socket_mem, nodeSetSize, nodeSet);
    return NVML_ERROR_INVALID_ARGUMENT;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCpuAffinityWithinScope(nvmlDevice_t device, unsigned int cpuSetSize,
                                                            unsigned long *cpuSet, int scope) {
    NV_ENTER("nvmlDeviceGetCpuAffinityWithinScope");
    NV_ANY(g, device);
    if (scope == NVML_AFFINITY_SCOPE_NODE) return nv_copy_mask(g->node_cpu, cpuSetSize, cpuSet);
    if (scope == NVML_AFFINITY_SCOPE_SOCKET) return nv_copy_mask(g->socket_cpu, cpuSetSize, cpuSet);
    return NVML_ERROR_INVALID_ARGUMENT;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetCpuAffinity(nvmlDevice_t device, unsigned int cpuSetSize,
                                                 unsigned long *cpuSet) {
    NV_ENTER("nvmlDeviceGetCpuAffinity");
    NV_ANY(g, device);
    return nv_copy_mask(g->node_cpu, cpuSetSize, cpuSet);
}

/* The NUMA node of the GPU's own memory where it is one (Grace Hopper, modelled from NVIDIA's
 * documentation: "only applies to platforms where the GPUs are NUMA nodes"); elsewhere not
 * supported, as measured on an x86 H200 VM. */
SIM_EXPORT nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t device, unsigned int *node) {
    NV_ENTER("nvmlDeviceGetNumaNodeId");
    NV_ANY(g, device);
    for (unsigned i = 0; i < SIM_MASK_WORDS * 64; i++) {
        if (g->gpu_mem[i / 64] >> (i % 64) & 1) {
            if (!node) return NVML_ERROR_INVALID_ARGUMENT;
            *node = i;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_SUPPORTED;
}

/* ---- MIG --------------------------------------------------------------------- */

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                             unsigned int *pendingMode) {
    NV_ENTER("nvmlDeviceGetMigMode");
    NV_ANY(g, device);
    if (g_mig) return NVML_ERROR_NOT_SUPPORTED;
    if (!currentMode || !pendingMode) return NVML_ERROR_INVALID_ARGUMENT;
    *currentMode = *pendingMode = g->nmigs > 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    NV_ENTER("nvmlDeviceGetMaxMigDeviceCount");
    NV_ANY(g, device);
    if (g_mig) return NVML_ERROR_NOT_SUPPORTED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = g->nmigs > 0 ? 7 : 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                            nvmlDevice_t *migDevice) {
    NV_ENTER("nvmlDeviceGetMigDeviceHandleByIndex");
    NV_GPU(g, device);
    if (!migDevice) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->nmigs) return NVML_ERROR_NOT_SUPPORTED;
    if (index >= (unsigned)g->nmigs) return NVML_ERROR_NOT_FOUND;
    /* an instance whose access capability this process cannot open (a container given another instance):
     * modelled, not measured */
    if (!g->migs[index].usable) return NVML_ERROR_NO_PERMISSION;
    *migDevice = &g->migs[index];
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
                                                                     nvmlDevice_t *device) {
    NV_ENTER("nvmlDeviceGetDeviceHandleFromMigDeviceHandle");
    NV_ANY(g, migDevice);
    if (!g_mig || !device) return NVML_ERROR_INVALID_ARGUMENT;
    *device = g;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice) {
    NV_ENTER("nvmlDeviceIsMigDeviceHandle");
    NV_ANY(g, device);
    (void)g;
    if (!isMigDevice) return NVML_ERROR_INVALID_ARGUMENT;
    *isMigDevice = g_mig != NULL;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    NV_ENTER("nvmlDeviceGetGpuInstanceId");
    NV_ANY(g, device);
    (void)g;
    if (!g_mig) return NVML_ERROR_NOT_SUPPORTED;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    *id = g_mig->gi;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    NV_ENTER("nvmlDeviceGetComputeInstanceId");
    NV_ANY(g, device);
    (void)g;
    if (!g_mig) return NVML_ERROR_NOT_SUPPORTED;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    *id = g_mig->ci;
    return NVML_SUCCESS;
}

/* ---- running processes ------------------------------------------------------ */

/* nvmlProcessInfo_v1_t: what the unversioned call fills (nvml.h under NVML_NO_UNVERSIONED_FUNC_DEFS) */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

/* nvmlProcessInfo_t: the _v2 and _v3 calls' element (pynvml's c_nvmlProcessInfo_v2_t and _v3_t, one layout) */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory; /* bytes, or NVML_VALUE_NOT_AVAILABLE (all ones) */
    unsigned int gpuInstanceId, computeInstanceId; /* 0xFFFFFFFF off MIG */
} nvmlProcessInfo_t;

/* Is this process listed for the handle?  A GPU lists every process on it (in MIG mode, every instance's: the
 * aggregate NVML gives a caller with the privileges, modelled); a MIG handle lists its own instance's. */
static int nv_proc_listed(const sim_mig *mig, const sim_proc *p) {
    return !mig || (p->gi == mig->gi && p->ci == mig->ci);
}

/* The documented protocol (modelled from NVML's reference, not measured): *infoCount in, the array's size;
 * out, how many were written, or, with NVML_ERROR_INSUFFICIENT_SIZE, how many there are.  infos may be NULL
 * when *infoCount is 0: the count query, which returns SUCCESS when no process runs.  v1: the legacy element. */
static nvmlReturn_t nv_compute_procs(nvmlDevice_t device, unsigned int *infoCount, void *infos, int v1) {
    NV_ANY(g, device);
    if (!infoCount || (!infos && *infoCount)) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (int i = 0; i < g->nprocs; i++) n += (unsigned)nv_proc_listed(g_mig, &g->procs[i]);
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int k = 0;
    for (int i = 0; i < g->nprocs; i++) {
        const sim_proc *p = &g->procs[i];
        if (!nv_proc_listed(g_mig, p)) continue;
        if (v1) {
            nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + k++;
            out->pid = p->pid;
            out->usedGpuMemory = p->used;
        } else {
            nvmlProcessInfo_t *out = (nvmlProcessInfo_t *)infos + k++;
            out->pid = p->pid;
            out->usedGpuMemory = p->used;
            out->gpuInstanceId = p->gi;
            out->computeInstanceId = p->ci;
        }
    }
    *infoCount = n;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                nvmlProcessInfo_t *infos) {
    NV_ENTER("nvmlDeviceGetComputeRunningProcesses_v3");
    return nv_compute_procs(device, infoCount, infos, 0);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                                nvmlProcessInfo_t *infos) {
    NV_ENTER("nvmlDeviceGetComputeRunningProcesses_v2");
    return nv_compute_procs(device, infoCount, infos, 0);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                             nvmlProcessInfo_v1_t *infos) {
    NV_ENTER("nvmlDeviceGetComputeRunningProcesses");
    return nv_compute_procs(device, infoCount, infos, 1);
}

/* No simulated process draws: the graphics list is always empty. */
static nvmlReturn_t nv_graphics_procs(nvmlDevice_t device, unsigned int *infoCount, void *infos) {
    NV_ANY(g, device);
    (void)g;
    if (!infoCount || (!infos && *infoCount)) return NVML_ERROR_INVALID_ARGUMENT;
    *infoCount = 0;
    return NVML_SUCCESS;
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos) {
    NV_ENTER("nvmlDeviceGetGraphicsRunningProcesses_v3");
    return nv_graphics_procs(device, infoCount, infos);
}

SIM_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos) {
    NV_ENTER("nvmlDeviceGetGraphicsRunningProcesses_v2");
    return nv_graphics_procs(device, infoCount, infos);
}
