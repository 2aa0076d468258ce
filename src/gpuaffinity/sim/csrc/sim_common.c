/* The code both simulated libraries share (declared in sim_common.h), compiled once and linked into each. */
#include "sim_common.h"

sim_config sim_cfg;
static pthread_once_t sim_once = PTHREAD_ONCE_INIT;
pthread_mutex_t sim_lock = PTHREAD_MUTEX_INITIALIZER;
const char *sim_lib_name = "lib";

void sim_complain(const char *what) {
    fprintf(stderr, "gpuaffinity simulator (%s): %s\n", sim_lib_name, what);
}

static int sim_parse_mask(const char *text, unsigned long long *words) {
    memset(words, 0, sizeof(unsigned long long) * SIM_MASK_WORDS);
    int i = 0;
    const char *p = text;
    while (*p && i < SIM_MASK_WORDS) {
        char *end;
        words[i++] = strtoull(p, &end, 16);
        if (end == p) return -1;
        p = end;
        if (*p == ',') p++;
    }
    return 0;
}

/* Copies with truncation, always terminated. */
void sim_copy(char *dst, size_t size, const char *src) {
    size_t i = 0;
    if (!size) return;
    for (; src && src[i] && i + 1 < size; i++) dst[i] = src[i];
    dst[i] = 0;
}

/* Leaves the rest of the line (the name) in *rest. */
static int sim_fields(char *line, char **fields, int want, char **rest) {
    char *p = line;
    for (int i = 0; i < want; i++) {
        while (*p == ' ') p++;
        if (!*p) return -1;
        fields[i] = p;
        while (*p && *p != ' ') p++;
        if (*p) *p++ = 0;
    }
    while (*p == ' ') p++;
    *rest = p;
    return 0;
}

static void sim_load_once(void) {
    const char *path = getenv("GPUAFFINITY_SIM_CONFIG");
    sim_cfg.loaded = -1;
    if (!path || !*path) {
        sim_complain("GPUAFFINITY_SIM_CONFIG is not set; start programs with `gpuaffinity sim run TOPOLOGY -- CMD`");
        return;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        char msg[512];
        snprintf(msg, sizeof msg, "cannot read GPUAFFINITY_SIM_CONFIG=%s: %s", path, strerror(errno));
        sim_complain(msg);
        return;
    }
    char line[4096];
    sim_gpu *g = NULL;
    sim_copy(sim_cfg.driver_version, sizeof sim_cfg.driver_version, "580.159.04");
    sim_copy(sim_cfg.nvml_version, sizeof sim_cfg.nvml_version, "13.580.159.04");
    sim_cfg.cuda_driver_version = 13000;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *rest, *fl[16];
        if (!strncmp(line, "driver_version ", 15)) {
            sim_copy(sim_cfg.driver_version, sizeof sim_cfg.driver_version, line + 15);
        } else if (!strncmp(line, "nvml_version ", 13)) {
            sim_copy(sim_cfg.nvml_version, sizeof sim_cfg.nvml_version, line + 13);
        } else if (!strncmp(line, "cuda_driver_version ", 20)) {
            sim_cfg.cuda_driver_version = atoi(line + 20);
        } else if (!strncmp(line, "gpu ", 4)) {
            if (sim_cfg.ngpus >= SIM_MAX_GPUS || sim_fields(line + 4, fl, 15, &rest)) goto bad;
            g = &sim_cfg.gpus[sim_cfg.ngpus];
            g->magic = SIM_GPU_MAGIC;
            g->index = sim_cfg.ngpus++;
            g->minor = atoi(fl[14]);
            sim_copy(g->uuid, sizeof g->uuid, fl[0]);
            sim_copy(g->bus_id, sizeof g->bus_id, fl[1]);
            g->domain = (unsigned)strtoul(fl[2], NULL, 0);
            g->bus = (unsigned)strtoul(fl[3], NULL, 0);
            g->device = (unsigned)strtoul(fl[4], NULL, 0);
            g->function = (unsigned)strtoul(fl[5], NULL, 0);
            g->pci_device_id = (unsigned)strtoul(fl[6], NULL, 0);
            g->pci_subsys_id = (unsigned)strtoul(fl[7], NULL, 0);
            g->cuda_rank = atoi(fl[8]);
            g->numa_node = atoi(fl[9]);
            g->mem_mib = strtoull(fl[10], NULL, 0);
            g->cc_major = atoi(fl[11]);
            g->cc_minor = atoi(fl[12]);
            g->sms = atoi(fl[13]);
            sim_copy(g->name, sizeof g->name, rest);
        } else if (!strncmp(line, "mask ", 5)) {
            if (!g || sim_fields(line + 5, fl, 2, &rest)) goto bad;
            unsigned long long *dst = !strcmp(fl[0], "node_mem")     ? g->node_mem
                                      : !strcmp(fl[0], "socket_mem") ? g->socket_mem
                                      : !strcmp(fl[0], "node_cpu")   ? g->node_cpu
                                      : !strcmp(fl[0], "socket_cpu") ? g->socket_cpu
                                      : !strcmp(fl[0], "gpu_mem")    ? g->gpu_mem
                                                                     : NULL;
            if (!dst || sim_parse_mask(fl[1], dst)) goto bad;
        } else if (!strncmp(line, "mig ", 4)) {
            if (!g || g->nmigs >= SIM_MAX_MIGS || sim_fields(line + 4, fl, 6, &rest)) goto bad;
            sim_mig *m = &g->migs[g->nmigs];
            m->magic = SIM_MIG_MAGIC;
            m->index = g->nmigs++;
            m->parent = g;
            sim_copy(m->uuid, sizeof m->uuid, fl[0]);
            m->gi = (unsigned)strtoul(fl[1], NULL, 10);
            m->ci = (unsigned)strtoul(fl[2], NULL, 10);
            m->mem_mib = strtoull(fl[3], NULL, 0);
            m->sms = atoi(fl[4]);
            m->cap_minor = atoi(fl[5]);
            m->usable = 1;
            sim_copy(m->name, sizeof m->name, rest);
        } else if (!strncmp(line, "proc ", 5)) {
            if (!g || g->nprocs >= SIM_MAX_PROCS || sim_fields(line + 5, fl, 2, &rest)) goto bad;
            sim_proc *pr = &g->procs[g->nprocs++];
            char *end;
            pr->pid = (unsigned)strtoul(fl[0], &end, 10);
            if (*end) goto bad;
            pr->used = !strcmp(fl[1], "n/a") ? ~0ULL : strtoull(fl[1], &end, 10);
            if (strcmp(fl[1], "n/a") && *end) goto bad;
            pr->gi = pr->ci = SIM_NO_INSTANCE;
            if (*rest) {
                if (sscanf(rest, "%u %u", &pr->gi, &pr->ci) != 2) goto bad;
            }
        } else if (line[0] && line[0] != '#') {
            goto bad;
        }
    }
    fclose(f);
    sim_cfg.loaded = 1;
    return;
bad:
    fclose(f);
    {
        char msg[4400];
        snprintf(msg, sizeof msg, "malformed line in %s: %.4000s", path, line);
        sim_complain(msg);
    }
    sim_cfg.ngpus = 0;
}

int sim_load(void) {
    pthread_once(&sim_once, sim_load_once);
    return sim_cfg.loaded == 1;
}

/* ---- the process's view: which device nodes open ------------------------ */

/* Does GPUAFFINITY_DEV_ROOT/<name> open with these flags?  No root: yes. */
static int sim_node_opens(const char *name, int flags) {
    const char *root = getenv("GPUAFFINITY_DEV_ROOT");
    if (!root || !*root) return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root, name);
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

static int sim_gpu_opens(const sim_gpu *g) {
    char name[64];
    snprintf(name, sizeof name, "nvidia%d", g->minor);
    return sim_node_opens(name, O_RDWR);
}

/* Marks every MIG instance usable or not; returns how many GPUs the process can open. */
int sim_scan_access(sim_gpu **open_gpus) {
    int n = 0;
    for (int i = 0; i < sim_cfg.ngpus; i++) {
        sim_gpu *g = &sim_cfg.gpus[i];
        g->index = -1;
        if (!sim_gpu_opens(g)) continue;
        g->index = n;
        open_gpus[n++] = g;
        for (int j = 0; j < g->nmigs; j++) {
            char name[64];
            snprintf(name, sizeof name, "nvidia-caps/nvidia-cap%d", g->migs[j].cap_minor);
            g->migs[j].usable = sim_node_opens(name, O_RDONLY);
        }
    }
    return n;
}

/* ---- call counters ---------------------------------------------------- */

static struct { const char *name; long count; } sim_counters[SIM_MAX_COUNTERS];
static int sim_ncounters;

static void sim_write_counters_locked(void) {
    const char *dir = getenv("GPUAFFINITY_SIM_COUNTERS");
    if (!dir || !*dir) return;
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%d.%s.counts", dir, (int)getpid(), sim_lib_name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    for (int i = 0; i < sim_ncounters; i++) fprintf(f, "%s %ld\n", sim_counters[i].name, sim_counters[i].count);
    fclose(f);
    rename(tmp, path);
}

static void sim_count(const char *name) {
    pthread_mutex_lock(&sim_lock);
    int i;
    for (i = 0; i < sim_ncounters; i++)
        if (sim_counters[i].name == name || !strcmp(sim_counters[i].name, name)) break;
    if (i == sim_ncounters && sim_ncounters < SIM_MAX_COUNTERS) {
        sim_counters[i].name = name;
        sim_counters[i].count = 0;
        sim_ncounters++;
    }
    if (i < sim_ncounters) sim_counters[i].count++;
    sim_write_counters_locked();
    pthread_mutex_unlock(&sim_lock);
}

long sim_counter_value(const char *name) {
    long v = 0;
    pthread_mutex_lock(&sim_lock);
    for (int i = 0; i < sim_ncounters; i++)
        if (!strcmp(sim_counters[i].name, name)) v = sim_counters[i].count;
    pthread_mutex_unlock(&sim_lock);
    return v;
}

void sim_counters_reset_in_child(void) {
    /* a forked child is a new process: it starts counting from zero */
    pthread_mutex_init(&sim_lock, NULL);
    sim_ncounters = 0;
}

/* ---- fault injection --------------------------------------------------- */

static struct { char name[96]; int code; long times; /* -1: always */ } sim_faults[SIM_MAX_FAULTS];
static int sim_nfaults;
static pthread_once_t sim_fault_once = PTHREAD_ONCE_INIT;

static void sim_faults_load(void) {
    const char *spec = getenv("GPUAFFINITY_SIM_FAULTS");
    if (!spec) return;
    char buf[4096];
    if (strlen(spec) >= sizeof buf) sim_complain("GPUAFFINITY_SIM_FAULTS is longer than 4095 characters: the rest is ignored");
    sim_copy(buf, sizeof buf, spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (sim_nfaults == SIM_MAX_FAULTS) {
            sim_complain("GPUAFFINITY_SIM_FAULTS names more than 32 faults: the rest are ignored");
            break;
        }
        char *eq = strchr(tok, '=');
        if (!eq) continue;
        *eq = 0;
        char *colon = strchr(eq + 1, ':');
        long times = -1;
        if (colon) {
            *colon = 0;
            times = strtol(colon + 1, NULL, 10);
        }
        while (*tok == ' ') tok++;
        sim_copy(sim_faults[sim_nfaults].name, sizeof sim_faults[0].name, tok);
        sim_faults[sim_nfaults].code = (int)strtol(eq + 1, NULL, 0);
        sim_faults[sim_nfaults].times = times;
        sim_nfaults++;
    }
}

/* A fault named "nvmlInit" also hits its variants "nvmlInit_v2" and
 * "nvmlInitWithFlags" (which pynvml's nvmlInit() calls). */
static int sim_name_matches(const char *fault, const char *fn) {
    if (!strcmp(fault, fn)) return 1;
    size_t n = strlen(fault);
    if (strncmp(fault, fn, n)) return 0;
    const char *s = fn + n;
    if (!strcmp(s, "WithFlags")) return 1;
    if (s[0] != '_' || s[1] != 'v' || !isdigit((unsigned char)s[2])) return 0;
    for (s += 2; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* Counts the call; returns nonzero and sets *code when a fault is injected. */
int sim_enter(const char *fn, int *code) {
    sim_count(fn);
    pthread_once(&sim_fault_once, sim_faults_load);
    int hit = 0;
    pthread_mutex_lock(&sim_lock);
    for (int i = 0; i < sim_nfaults; i++) {
        if (!sim_name_matches(sim_faults[i].name, fn) || sim_faults[i].times == 0) continue;
        if (sim_faults[i].times > 0) sim_faults[i].times--;
        *code = sim_faults[i].code;
        hit = 1;
        break;
    }
    pthread_mutex_unlock(&sim_lock);
    return hit;
}

/* Does the UUID body (after its "GPU-"/"MIG-" tag) start with `text`?  Dashes
 * are skipped on both sides, hex compared without regard to case, and text past
 * the UUID's last digit is ignored (all as measured on driver 580.159.04). */
int sim_uuid_prefix(const char *uuid_body, const char *text) {
    const char *u = uuid_body, *t = text;
    for (;;) {
        while (*u == '-') u++;
        while (*t == '-') t++;
        if (!*u || !*t) return 1;
        if (tolower((unsigned char)*u) != tolower((unsigned char)*t)) return 0;
        u++;
        t++;
    }
}
