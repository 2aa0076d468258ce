/* A simulated libcuda.so.1: the CUDA driver API calls that enumerate and
 * identify devices, with CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER applied
 * the way driver 580.159.04 applies them (docs/cvd-grammar.md holds the
 * measured table this follows).  Everything else is absent, so callers see
 * "symbol not found" as they would with an old driver.  Only the GPUs (and
 * MIG instances) this process can open take part, as with the real driver
 * (sim_common.h: GPUAFFINITY_DEV_ROOT): the others are not in the base order,
 * and their UUIDs name nothing. */
#include "sim_common.h"

#include <dlfcn.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_NOT_FOUND = 500,
};

/* One visible CUDA device: a whole GPU, or one MIG instance of it. */
typedef struct {
    sim_gpu *gpu;
    sim_mig *mig;
} cu_dev;

static struct {
    pthread_mutex_t lock;
    int state;       /* 0 not yet, 1 ok, else the sticky cuInit error */
    int forked;      /* this process is a fork() child of an initialised one */
    int count;
    cu_dev devs[SIM_MAX_GPUS];
} cu = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, {{0, 0}}};

static void cu_after_fork_child(void) {
    sim_counters_reset_in_child();
    pthread_mutex_init(&cu.lock, NULL);
    if (cu.state == 1) cu.forked = 1;
}

__attribute__((constructor)) static void cu_setup(void) {
    sim_lib_name = "cuda";
    pthread_atfork(NULL, NULL, cu_after_fork_child);
}

/* ---- enumeration ------------------------------------------------------- */

/* The base order of the GPUs this process can open: PCI order, or by each GPU's cuda_rank (ties in PCI order). */
static int cu_base_order(const char *order, sim_gpu **base) {
    int n = sim_scan_access(base);
    if (order && !strcmp(order, "PCI_BUS_ID")) return n;
    /* measured: cuInit -> 101; but where the process can open no GPU, 100 (the one-GPU host, its GPU hidden) */
    if (order && strcmp(order, "FASTEST_FIRST")) return n ? -1 : 0;
    for (int i = 1; i < n; i++) { /* stable insertion sort */
        sim_gpu *g = base[i];
        int j = i - 1;
        while (j >= 0 && base[j]->cuda_rank > g->cuda_rank) {
            base[j + 1] = base[j];
            j--;
        }
        base[j + 1] = g;
    }
    return n;
}

/* Adds a device; returns 0, or CUDA_ERROR_INVALID_DEVICE for a duplicate (measured). */
static int cu_add(cu_dev *out, int *n, sim_gpu *g, sim_mig *m) {
    for (int i = 0; i < *n; i++)
        if (out[i].gpu == g && out[i].mig == m) return CUDA_ERROR_INVALID_DEVICE;
    out[*n].gpu = g;
    out[*n].mig = m;
    (*n)++;
    return 0;
}

static int cu_has_mig(cu_dev *out, int n) {
    for (int i = 0; i < n; i++)
        if (out[i].mig) return 1;
    return 0;
}

/* A whole GPU as CUDA sees it: a MIG-enabled GPU shows its first instance this
 * process can use (modelled from NVIDIA's MIG guide, not measured: one MIG
 * device a process), and no device at all when it can use none (returns -1). */
static int cu_add_gpu(cu_dev *out, int *n, sim_gpu *g, int *stop) {
    if (!g->nmigs) return cu_add(out, n, g, NULL);
    sim_mig *first = NULL;
    for (int j = 0; j < g->nmigs && !first; j++)
        if (g->migs[j].usable) first = &g->migs[j];
    if (!first) return -1;
    if (cu_has_mig(out, *n)) {
        *stop = 1;
        return 0;
    }
    return cu_add(out, n, g, first);
}

/* "GPU-<prefix>": the one GPU whose UUID starts with the text (see sim_uuid_prefix).  The prefix must be
 * unique among every GPU of the host, those this process cannot open included, and then name one it can
 * open (measured on a 2x H200 host with one GPU's node hidden: "GPU-" names nothing, and so does the
 * hidden GPU's UUID or a prefix of it). */
static sim_gpu *cu_match_gpu_uuid(const char *tok) {
    if (strncmp(tok, "GPU-", 4)) return NULL; /* measured: "gpu-" is refused */
    const char *hex = tok + 4;
    if (!*hex) return NULL; /* measured on one GPU: "GPU-" names nothing ("GPU--" names the only GPU) */
    sim_gpu *found = NULL;
    for (int i = 0; i < sim_cfg.ngpus; i++) {
        if (sim_uuid_prefix(sim_cfg.gpus[i].uuid + 4, hex)) {
            if (found) return NULL; /* ambiguous prefix, measured: ends the list */
            found = &sim_cfg.gpus[i];
        }
    }
    return found && found->index >= 0 ? found : NULL;
}

/* "MIG-<uuid prefix>" or "MIG-GPU-<uuid>/<gi>/<ci>" (modelled from NVIDIA's docs). */
static sim_mig *cu_match_mig(const char *tok) {
    if (strncmp(tok, "MIG-", 4)) return NULL;
    const char *rest = tok + 4;
    if (!strncmp(rest, "GPU-", 4)) {
        const char *slash = strchr(rest, '/');
        if (!slash) return NULL;
        char gpu_part[128];
        size_t len = (size_t)(slash - rest);
        if (len >= sizeof gpu_part) return NULL;
        memcpy(gpu_part, rest, len);
        gpu_part[len] = 0;
        /* "/<digits>/<digits>" and nothing else */
        const char *q = slash + 1;
        if (!isdigit((unsigned char)*q)) return NULL;
        unsigned long gi = strtoul(q, (char **)&q, 10);
        if (*q++ != '/' || !isdigit((unsigned char)*q)) return NULL;
        unsigned long ci = strtoul(q, (char **)&q, 10);
        if (*q) return NULL;
        for (int i = 0; i < sim_cfg.ngpus; i++) {
            sim_gpu *g = &sim_cfg.gpus[i];
            if (g->index < 0 || strcasecmp(g->uuid, gpu_part)) continue;
            for (int j = 0; j < g->nmigs; j++)
                if (g->migs[j].usable && g->migs[j].gi == gi && g->migs[j].ci == ci) return &g->migs[j];
        }
        return NULL;
    }
    if (!*rest) return NULL; /* measured on one GPU without MIG: "MIG-" names nothing */
    sim_mig *found = NULL;
    for (int i = 0; i < sim_cfg.ngpus; i++) {
        if (sim_cfg.gpus[i].index < 0) continue;
        for (int j = 0; j < sim_cfg.gpus[i].nmigs; j++) {
            sim_mig *m = &sim_cfg.gpus[i].migs[j];
            if (!m->usable) continue;
            if (!strncmp(m->uuid, "MIG-", 4) && sim_uuid_prefix(m->uuid + 4, rest)) {
                if (found) return NULL;
                found = m;
            }
        }
    }
    return found;
}

/* Applies CUDA_VISIBLE_DEVICES; returns 0 or the error cuInit reports. */
static int cu_enumerate(void) {
    sim_gpu *base[SIM_MAX_GPUS];
    int nbase = cu_base_order(getenv("CUDA_DEVICE_ORDER"), base);
    if (nbase < 0) return CUDA_ERROR_INVALID_DEVICE;
    cu.count = 0;
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    int stop = 0;
    if (!cvd) {
        for (int i = 0; i < nbase && !stop; i++) {
            int rc = cu_add_gpu(cu.devs, &cu.count, base[i], &stop);
            if (rc > 0) return rc; /* -1: a MIG GPU with no instance for us shows nothing */
        }
        return cu.count ? 0 : CUDA_ERROR_NO_DEVICE;
    }
    /* the whole value, however long, as the driver reads it */
    char *buf = strdup(cvd);
    if (!buf) return CUDA_ERROR_NO_DEVICE;
    /* The first entry decides the list's kind: UUIDs or integers (measured:
     * an entry of the other kind ends the list). */
    int uuid_list = !strncmp(buf, "GPU-", 4) || !strncmp(buf, "MIG-", 4);
    char *p = buf;
    while (!stop) {
        char *comma = strchr(p, ',');
        if (comma) *comma = 0;
        int rc = 0;
        if (uuid_list) {
            if (!strncmp(p, "MIG-", 4)) {
                sim_mig *m = cu_match_mig(p);
                if (!m && strncmp(p, "MIG-GPU-", 8) && p[4]) {
                    /* measured on a one-GPU host without MIG: "MIG--", "MIG-e" (a prefix of the GPU's UUID)
                     * show the GPU.  A MIG- prefix naming no MIG instance is read as a GPU UUID prefix. */
                    char as_gpu[4096];
                    snprintf(as_gpu, sizeof as_gpu, "GPU-%s", p + 4);
                    sim_gpu *g = cu_match_gpu_uuid(as_gpu);
                    if (!g) break;
                    rc = cu_add_gpu(cu.devs, &cu.count, g, &stop);
                    if (rc < 0) break;
                } else {
                    if (!m || cu_has_mig(cu.devs, cu.count)) break;
                    rc = cu_add(cu.devs, &cu.count, m->parent, m);
                }
            } else {
                sim_gpu *g = cu_match_gpu_uuid(p);
                if (!g) break;
                rc = cu_add_gpu(cu.devs, &cu.count, g, &stop);
                if (rc < 0) break; /* names a GPU that shows no device here: the list ends */
            }
        } else {
            /* strtoul semantics, measured: leading white space and a sign are
             * taken, text after the digits is ignored, the value is cut to 32 bits. */
            const char *q = p;
            while (isspace((unsigned char)*q)) q++;
            if (*q == '+' || *q == '-') q++;
            if (!isdigit((unsigned char)*q)) break;
            unsigned int v = (unsigned int)strtoull(p, NULL, 10);
            if (v >= (unsigned)nbase) break;
            rc = cu_add_gpu(cu.devs, &cu.count, base[v], &stop);
            if (rc < 0) break;
        }
        if (rc) {
            free(buf);
            cu.count = 0;
            return rc;
        }
        if (!comma) break;
        p = comma + 1;
    }
    free(buf);
    return cu.count ? 0 : CUDA_ERROR_NO_DEVICE;
}

/* ---- entry points ------------------------------------------------------ */

#define CU_ENTER(name)                           \
    int injected_;                               \
    if (sim_enter(name, &injected_)) return injected_;

/* Every call that needs cuInit first. */
static int cu_ready(void) {
    if (cu.forked) return CUDA_ERROR_NOT_INITIALIZED;
    if (cu.state != 1) return CUDA_ERROR_NOT_INITIALIZED;
    return 0;
}

static int cu_dev_ok(CUdevice d) { return d >= 0 && d < cu.count; }

SIM_EXPORT CUresult cuInit(unsigned int flags) {
    CU_ENTER("cuInit");
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&cu.lock);
    int rc;
    if (cu.forked) {
        rc = CUDA_ERROR_NOT_INITIALIZED;
    } else if (cu.state == 0) {
        if (!sim_load()) {
            cu.state = CUDA_ERROR_NO_DEVICE;
        } else {
            int err = cu_enumerate();
            cu.state = err ? err : 1;
        }
        rc = cu.state == 1 ? 0 : cu.state;
    } else {
        rc = cu.state == 1 ? 0 : cu.state;
    }
    pthread_mutex_unlock(&cu.lock);
    return rc;
}

SIM_EXPORT CUresult cuDriverGetVersion(int *version) {
    CU_ENTER("cuDriverGetVersion");
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = sim_load() ? sim_cfg.cuda_driver_version : 13000;
    return 0;
}

SIM_EXPORT CUresult cuDeviceGetCount(int *count) {
    CU_ENTER("cuDeviceGetCount");
    int rc = cu_ready();
    if (rc) return rc;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = cu.count;
    return 0;
}

SIM_EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    CU_ENTER("cuDeviceGet");
    int rc = cu_ready();
    if (rc) return rc;
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_dev_ok(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return 0;
}

SIM_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    CU_ENTER("cuDeviceGetName");
    int rc = cu_ready();
    if (rc) return rc;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_dev_ok(d)) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", cu.devs[d].mig ? cu.devs[d].mig->name : cu.devs[d].gpu->name);
    return 0;
}

/* Measured form: "0000:3B:00.0", a 4-digit domain and upper-case hex. */
SIM_EXPORT CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice d) {
    CU_ENTER("cuDeviceGetPCIBusId");
    int rc = cu_ready();
    if (rc) return rc;
    if (!bus || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_dev_ok(d)) return CUDA_ERROR_INVALID_DEVICE;
    sim_gpu *g = cu.devs[d].gpu;
    snprintf(bus, (size_t)len, "%04X:%02X:%02X.%X", g->domain, g->bus, g->device, g->function);
    return 0;
}

static int cu_parse_uuid(const char *text, unsigned char *out) {
    const char *p = strchr(text, '-'); /* skip the "GPU-" / "MIG-" tag */
    if (!p) return -1;
    p++;
    for (int i = 0; i < 16; i++) {
        while (*p == '-') p++;
        unsigned v;
        if (sscanf(p, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
        p += 2;
    }
    return 0;
}

static CUresult cu_uuid(unsigned char *out, CUdevice d, int want_mig) {
    int rc = cu_ready();
    if (rc) return rc;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_dev_ok(d)) return CUDA_ERROR_INVALID_DEVICE;
    const char *u = want_mig && cu.devs[d].mig ? cu.devs[d].mig->uuid : cu.devs[d].gpu->uuid;
    if (!strncmp(u, "MIG-GPU-", 8)) u = cu.devs[d].gpu->uuid; /* old-style MIG names carry no UUID of their own */
    return cu_parse_uuid(u, out) ? CUDA_ERROR_INVALID_VALUE : 0;
}

/* v1 names the physical GPU; v2 names the MIG instance where there is one. */
SIM_EXPORT CUresult cuDeviceGetUuid(unsigned char *uuid, CUdevice d) {
    CU_ENTER("cuDeviceGetUuid");
    return cu_uuid(uuid, d, 0);
}

SIM_EXPORT CUresult cuDeviceGetUuid_v2(unsigned char *uuid, CUdevice d) {
    CU_ENTER("cuDeviceGetUuid_v2");
    return cu_uuid(uuid, d, 1);
}

SIM_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    CU_ENTER("cuDeviceTotalMem_v2");
    int rc = cu_ready();
    if (rc) return rc;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_dev_ok(d)) return CUDA_ERROR_INVALID_DEVICE;
    unsigned long long mib = cu.devs[d].mig ? cu.devs[d].mig->mem_mib : cu.devs[d].gpu->mem_mib;
    *bytes = (size_t)(mib << 20);
    return 0;
}

SIM_EXPORT CUresult cuDeviceGetAttribute(int *value, int attr, CUdevice d) {
    CU_ENTER("cuDeviceGetAttribute");
    int rc = cu_ready();
    if (rc) return rc;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_dev_ok(d)) return CUDA_ERROR_INVALID_DEVICE;
    sim_gpu *g = cu.devs[d].gpu;
    sim_mig *m = cu.devs[d].mig;
    switch (attr) {
    case 16: *value = m ? m->sms : g->sms; return 0;            /* MULTIPROCESSOR_COUNT */
    case 18: *value = 0; return 0;                              /* INTEGRATED */
    case 33: *value = (int)g->bus; return 0;                    /* PCI_BUS_ID */
    case 34: *value = (int)g->device; return 0;                 /* PCI_DEVICE_ID */
    case 50: *value = (int)g->domain; return 0;                 /* PCI_DOMAIN_ID */
    case 75: *value = g->cc_major; return 0;                    /* COMPUTE_CAPABILITY_MAJOR */
    case 76: *value = g->cc_minor; return 0;                    /* COMPUTE_CAPABILITY_MINOR */
    case 84: *value = 0; return 0;                              /* MULTI_GPU_BOARD */
    case 130: *value = 0; return 0;                             /* NUMA_CONFIG: none (measured) */
    case 131: *value = -1; return 0;                            /* NUMA_ID (measured) */
    case 134: *value = g->numa_node < 0 ? 0 : g->numa_node; return 0; /* HOST_NUMA_ID; measured 0 where sysfs says -1 */
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

/* Accepts the forms NVML and CUDA print: [domain:]bus:device[.function], hex. */
static int cu_parse_bus(const char *s, unsigned *dom, unsigned *bus, unsigned *dev, unsigned *fn) {
    unsigned a, b, c, f = 0;
    int used = 0;
    *dom = 0;
    if (sscanf(s, "%x:%x:%x%n", &a, &b, &c, &used) == 3) {
        *dom = a; *bus = b; *dev = c;
    } else if (sscanf(s, "%x:%x%n", &b, &c, &used) == 2) {
        *bus = b; *dev = c;
    } else {
        return -1;
    }
    s += used;
    if (*s == '.') {
        if (sscanf(s, ".%x%n", &f, &used) != 1) return -1;
        s += used;
    }
    if (*s) return -1;
    *fn = f;
    return 0;
}

SIM_EXPORT CUresult cuDeviceGetByPCIBusId(CUdevice *d, const char *busid) {
    CU_ENTER("cuDeviceGetByPCIBusId");
    int rc = cu_ready();
    if (rc) return rc;
    if (!d || !busid) return CUDA_ERROR_INVALID_VALUE;
    unsigned dom, bus, dev, fn;
    if (cu_parse_bus(busid, &dom, &bus, &dev, &fn)) return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < cu.count; i++) {
        sim_gpu *g = cu.devs[i].gpu;
        if (g->domain == dom && g->bus == bus && g->device == dev && g->function == fn) {
            *d = i;
            return 0;
        }
    }
    return CUDA_ERROR_INVALID_DEVICE; /* measured for a GPU hidden by CUDA_VISIBLE_DEVICES */
}

static const struct { int code; const char *name, *text; } cu_errors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {34, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {35, "CUDA_ERROR_INSUFFICIENT_DRIVER", "CUDA driver version is insufficient for CUDA runtime version"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static int cu_error_index(int code) {
    for (size_t i = 0; i < sizeof cu_errors / sizeof cu_errors[0]; i++)
        if (cu_errors[i].code == code) return (int)i;
    return -1;
}

/* Measured: an unknown code gives CUDA_ERROR_INVALID_VALUE and NULL. */
SIM_EXPORT CUresult cuGetErrorString(CUresult code, const char **text) {
    CU_ENTER("cuGetErrorString");
    if (!text) return CUDA_ERROR_INVALID_VALUE;
    int i = cu_error_index(code);
    *text = i < 0 ? NULL : cu_errors[i].text;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : 0;
}

SIM_EXPORT CUresult cuGetErrorName(CUresult code, const char **name) {
    CU_ENTER("cuGetErrorName");
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    int i = cu_error_index(code);
    *name = i < 0 ? NULL : cu_errors[i].name;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : 0;
}

/* The simulator's own question, for tests: how often did this process call NAME? */
SIM_EXPORT long gpuaffinitySimCallCount(const char *name) { return sim_counter_value(name); }

/* ---- cuGetProcAddress: how cuda.bindings finds every entry point -------- */

static void *cu_self(void) {
    static void *self;
    if (!self) {
        Dl_info info;
        if (dladdr((void *)cuInit, &info) && info.dli_fname) self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    }
    return self;
}

static CUresult cu_proc_address(const char *symbol, void **pfn, int version, int *status) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    char name[256];
    /* The versioned implementation a caller of this CUDA version gets. */
    if (!strcmp(symbol, "cuDeviceTotalMem") || (!strcmp(symbol, "cuDeviceGetUuid") && version >= 11040))
        snprintf(name, sizeof name, "%s_v2", symbol);
    else
        snprintf(name, sizeof name, "%s", symbol);
    if (strncmp(name, "cu", 2) || !strncmp(name, "gpuaffinity", 11)) name[0] = 0;
    void *self = cu_self();
    void *p = self && name[0] ? dlsym(self, name) : NULL;
    if (status) *status = p ? 0 : 1; /* CU_GET_PROC_ADDRESS_SUCCESS / SYMBOL_NOT_FOUND */
    if (!p) return CUDA_ERROR_NOT_FOUND;
    *pfn = p;
    return 0;
}

SIM_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, uint64_t flags, int *status) {
    CU_ENTER("cuGetProcAddress_v2");
    (void)flags;
    return cu_proc_address(symbol, pfn, version, status);
}

SIM_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, uint64_t flags) {
    CU_ENTER("cuGetProcAddress");
    (void)flags;
    return cu_proc_address(symbol, pfn, version, NULL);
}
