/* Shared by the simulated libnvidia-ml.so.1 and libcuda.so.1.
 *
 * Both libraries read one machine description, written by the Python side
 * (gpuaffinity.sim.render) from a topology file, from the path in
 * GPUAFFINITY_SIM_CONFIG.  Its format is line based, one record a line:
 *
 *   driver_version 580.159.04
 *   nvml_version 13.580.159.04
 *   cuda_driver_version 13000
 *   gpu UUID BUSID DOMAIN BUS DEVICE FUNCTION PCIDEVID SUBSYSID CUDARANK NUMANODE MEMMIB CCMAJ CCMIN SMS MINOR NAME...
 *   mask KIND W0,W1,...     (applies to the last gpu; KIND is node_mem,
 *                            socket_mem, node_cpu, socket_cpu or gpu_mem (the
 *                            NUMA node holding the GPU's own memory, Grace
 *                            Hopper style; absent or 0: none); words are
 *                            64-bit hex, word 0 holds bits 0-63)
 *   mig UUID GI CI MEMMIB SMS CAPMINOR NAME...   (an instance of the last gpu)
 *   proc PID USEDBYTES [GI CI]   (a process with a CUDA context on the last gpu,
 *                            as nvmlDeviceGetComputeRunningProcesses lists it:
 *                            USEDBYTES its GPU memory in bytes, or n/a for
 *                            NVML_VALUE_NOT_AVAILABLE; GI CI the MIG instance
 *                            it runs in, absent on a GPU without MIG.  In the
 *                            order NVML lists them; at most SIM_MAX_PROCS a gpu)
 *
 * gpu records come in PCI order, every GPU of the host.  MINOR is the GPU's
 * device minor (/dev/nvidia<MINOR>), CAPMINOR the MIG instance's access
 * capability (/dev/nvidia-caps/nvidia-cap<CAPMINOR>).
 *
 * The process's own view: where GPUAFFINITY_DEV_ROOT names a folder (the
 * simulated /dev), NVML and CUDA enumerate only the GPUs whose device node
 * there opens (O_RDWR), and only the MIG instances whose capability node opens
 * (O_RDONLY), at nvmlInit and cuInit, as the real driver does (measured on a
 * 2x H200 host, driver 580.159.04: a node absent from a read-only /dev, or one
 * that refuses the open, hides its GPU from both).  Unset: every GPU opens.
 *
 * Two more variables change behaviour:
 *   GPUAFFINITY_SIM_FAULTS    "name=code[:times],..."  the named entry point
 *                             returns code instead of working (the first
 *                             `times` calls only, when given).  A name without
 *                             a suffix also matches its _vN and WithFlags variants.
 *   GPUAFFINITY_SIM_COUNTERS  a folder: after every call the library rewrites
 *                             FOLDER/<pid>.<lib>.counts with "name count" lines.
 * The code is in sim_common.c, compiled once and linked into each library
 * with hidden visibility: each library has its own copy of the state below,
 * and exports none of it.
 */
#ifndef GPUAFFINITY_SIM_COMMON_H
#define GPUAFFINITY_SIM_COMMON_H

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#define SIM_MAX_GPUS 64
#define SIM_MAX_MIGS 8
#define SIM_MASK_WORDS 16
#define SIM_MAX_COUNTERS 256
#define SIM_MAX_FAULTS 32
#define SIM_MAX_PROCS 128
#define SIM_NO_INSTANCE 0xFFFFFFFFu /* gpuInstanceId/computeInstanceId off MIG */

struct sim_gpu;

typedef struct sim_mig {
    unsigned int magic; /* tells a MIG handle from a GPU handle */
    char uuid[96];
    unsigned int gi, ci;
    unsigned long long mem_mib;
    int sms;
    char name[96];
    int index; /* position under its parent */
    int cap_minor; /* /dev/nvidia-caps/nvidia-cap<cap_minor> grants access */
    int usable;    /* this process can use it (set at nvmlInit / cuInit) */
    struct sim_gpu *parent;
} sim_mig;

typedef struct sim_proc {
    unsigned int pid;
    unsigned long long used; /* bytes; ~0ULL: NVML_VALUE_NOT_AVAILABLE */
    unsigned int gi, ci;     /* SIM_NO_INSTANCE off MIG */
} sim_proc;

typedef struct sim_gpu {
    unsigned int magic;
    char uuid[96];
    char bus_id[32]; /* 0000:3b:00.0, lower case, as sysfs writes it */
    unsigned int domain, bus, device, function;
    unsigned int pci_device_id, pci_subsys_id;
    int cuda_rank;
    int numa_node;
    unsigned long long mem_mib;
    int cc_major, cc_minor, sms;
    char name[96];
    unsigned long long node_mem[SIM_MASK_WORDS], socket_mem[SIM_MASK_WORDS];
    unsigned long long node_cpu[SIM_MASK_WORDS], socket_cpu[SIM_MASK_WORDS];
    unsigned long long gpu_mem[SIM_MASK_WORDS];
    int nmigs;
    sim_mig migs[SIM_MAX_MIGS];
    int minor; /* /dev/nvidia<minor> */
    int index; /* NVML index in this process, -1 where the process cannot open the GPU */
    int nprocs;
    sim_proc procs[SIM_MAX_PROCS]; /* processes with a CUDA context here (proc lines) */
} sim_gpu;

#define SIM_GPU_MAGIC 0x47505531u
#define SIM_MIG_MAGIC 0x4d494731u

typedef struct sim_config {
    int loaded; /* 1 ok, -1 failed */
    char driver_version[80];
    char nvml_version[80];
    int cuda_driver_version;
    int ngpus;
    sim_gpu gpus[SIM_MAX_GPUS];
} sim_config;

#define SIM_HIDDEN __attribute__((visibility("hidden")))

/* State: one copy in each library. */
extern SIM_HIDDEN sim_config sim_cfg;
extern SIM_HIDDEN pthread_mutex_t sim_lock;
extern SIM_HIDDEN const char *sim_lib_name; /* "nvml" or "cuda": set by each library's constructor */

/* Complains on stderr, naming the library. */
SIM_HIDDEN void sim_complain(const char *what);
/* Copies with truncation, always terminated. */
SIM_HIDDEN void sim_copy(char *dst, size_t size, const char *src);
/* Reads GPUAFFINITY_SIM_CONFIG once; 1 when the machine is loaded. */
SIM_HIDDEN int sim_load(void);
/* Marks MIG instances usable or not; fills open_gpus with the GPUs this process can open; returns how many. */
SIM_HIDDEN int sim_scan_access(sim_gpu **open_gpus);
/* Counts a call of `name` (for GPUAFFINITY_SIM_COUNTERS); how many so far. */
SIM_HIDDEN long sim_counter_value(const char *name);
/* A forked child counts from zero. */
SIM_HIDDEN void sim_counters_reset_in_child(void);
/* Counts the call; returns nonzero and sets *code when a fault is injected (GPUAFFINITY_SIM_FAULTS). */
SIM_HIDDEN int sim_enter(const char *fn, int *code);
/* Does the UUID body start with `text` (dashes skipped, hex without regard to case)? */
SIM_HIDDEN int sim_uuid_prefix(const char *uuid_body, const char *text);

#define SIM_EXPORT __attribute__((visibility("default")))

#endif
