/*
 * uav_bridge: the native half of core.uav.Upscale (vs-uav).
 *
 * Pure Python cannot register a VapourSynth plugin namespace, so this tiny plugin does it
 * and forwards every call to Python. All logic lives in vs_uav.vsfilter.bridge / vs_uav.vsfilter.upscale.
 *
 *   uav.Upscale(clip, ...)    the public filter; its argument string is generated from
 *                             vs_uav.settings (uav_signature.h), so VapourSynth type-checks
 *                             calls and documents them in __signature__.
 *   uav.BridgeRegister(func)  called by vs_uav.vsfilter.bridge: stores the Python implementation
 *                             for this core (a VSFunction reference).
 *   uav.BridgeUnregister()    called by vs_uav.vsfilter.bridge when the environment is destroyed:
 *                             releases that reference so the core can be freed.
 *   uav.Guard(clip)           passes frames through; a frame carrying an _UAVError prop
 *                             becomes a frame error with exactly that text. A Python frame
 *                             callback's exceptions always arrive with a traceback; this is
 *                             how a failed render is reported in one line.
 *
 * On the first Upscale call in a core nothing is registered yet: the plugin takes the GIL,
 * imports vs_uav.vsfilter.bridge and calls its _register_from_native(), which calls
 * core.uav.BridgeRegister(func=...) on the current core. CPython is looked up at run time
 * (never linked), so the library also loads in hosts without Python and then says so.
 *
 * SPDX-License-Identifier: MIT
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <link.h>
#endif

#include "VapourSynth4.h"
#include "uav_signature.h" /* UAV_UPSCALE_ARGS, UAV_UPSCALE_RETURN (generated) */

#define NAME "uav.Upscale"
#define BRIDGE_MODULE "vs_uav.vsfilter.bridge"
#define MSG_MAX 4096

/* -- CPython, looked up at run time ---------------------------------------------------- */

typedef struct _object PyObject;
typedef ptrdiff_t Py_ssize_t;

static struct {
    int ok;
    int (*IsInitialized)(void);
    int (*GILState_Ensure)(void);
    void (*GILState_Release)(int);
    PyObject *(*Import_ImportModule)(const char *);
    PyObject *(*Object_GetAttrString)(PyObject *, const char *);
    PyObject *(*Object_CallObject)(PyObject *, PyObject *);
    PyObject *(*Object_Str)(PyObject *);
    const char *(*Unicode_AsUTF8AndSize)(PyObject *, Py_ssize_t *);
    void (*DecRef)(PyObject *);
    void (*Err_Fetch)(PyObject **, PyObject **, PyObject **);
    void (*Err_NormalizeException)(PyObject **, PyObject **, PyObject **);
    void (*Err_Clear)(void);
} py;

static pthread_once_t py_once = PTHREAD_ONCE_INIT;
static void *py_lib; /* libpython loaded with RTLD_LOCAL (e.g. by libvsscript), if any */

#ifdef __linux__
static int find_libpython(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    const char *slash = strrchr(info->dlpi_name, '/');
    const char *base = slash ? slash + 1 : info->dlpi_name;
    if (strncmp(base, "libpython3", 10) == 0) {
        py_lib = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
        return py_lib != NULL;
    }
    return 0;
}
#endif

static void *py_sym(const char *name) {
    void *p = dlsym(RTLD_DEFAULT, name);
    return p ? p : (py_lib ? dlsym(py_lib, name) : NULL);
}

static void py_load(void) {
    if (!dlsym(RTLD_DEFAULT, "Py_IsInitialized")) {
#ifdef __linux__
        dl_iterate_phdr(find_libpython, NULL);
#endif
    }
#define SYM(field, name) if (!(*(void **)&py.field = py_sym(name))) return
    SYM(IsInitialized, "Py_IsInitialized");
    SYM(GILState_Ensure, "PyGILState_Ensure");
    SYM(GILState_Release, "PyGILState_Release");
    SYM(Import_ImportModule, "PyImport_ImportModule");
    SYM(Object_GetAttrString, "PyObject_GetAttrString");
    SYM(Object_CallObject, "PyObject_CallObject");
    SYM(Object_Str, "PyObject_Str");
    SYM(Unicode_AsUTF8AndSize, "PyUnicode_AsUTF8AndSize");
    SYM(DecRef, "Py_DecRef");
    SYM(Err_Fetch, "PyErr_Fetch");
    SYM(Err_NormalizeException, "PyErr_NormalizeException");
    SYM(Err_Clear, "PyErr_Clear");
#undef SYM
    py.ok = 1;
}

static void py_decref(PyObject *o) {
    if (o)
        py.DecRef(o);
}

/* The text of a str object (NULL if it is not one); copied into buf. */
static const char *py_text(PyObject *o, char *buf, size_t size) {
    const char *s = o ? py.Unicode_AsUTF8AndSize(o, NULL) : NULL;
    if (!s) {
        py.Err_Clear();
        return NULL;
    }
    snprintf(buf, size, "%s", s);
    return buf;
}

/* The pending Python exception as one line of text; clears it. */
static void py_error(char *buf, size_t size) {
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    py.Err_Fetch(&type, &value, &tb);
    py.Err_NormalizeException(&type, &value, &tb);
    PyObject *str = value ? py.Object_Str(value) : NULL;
    if (!py_text(str, buf, size))
        snprintf(buf, size, "unknown Python error");
    py_decref(str);
    py_decref(type);
    py_decref(value);
    py_decref(tb);
    for (char *c = buf; *c; ++c)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
}

/* -- per-core state ----------------------------------------------------------------------- */

/* One per core: VapourSynthPluginInit2 runs once for every core that loads the plugin and
 * hands this to all three functions. It is never freed (the API has no plugin-unload hook);
 * it is a few bytes, and the Python reference in it is released by BridgeUnregister. */
typedef struct {
    pthread_mutex_t lock;
    VSFunction *impl; /* the Python implementation for this core, or NULL */
} CoreState;

static VSFunction *take_impl(CoreState *st, const VSAPI *vsapi) {
    pthread_mutex_lock(&st->lock);
    VSFunction *f = st->impl ? vsapi->addFunctionRef(st->impl) : NULL;
    pthread_mutex_unlock(&st->lock);
    return f;
}

static void swap_impl(CoreState *st, VSFunction *f, const VSAPI *vsapi) {
    pthread_mutex_lock(&st->lock);
    VSFunction *old = st->impl;
    st->impl = f;
    pthread_mutex_unlock(&st->lock);
    if (old)
        vsapi->freeFunction(old); /* outside the lock: freeing it takes the GIL */
}

/* Ask Python to register its implementation with this core. 0 on success, else a message. */
static int register_from_python(CoreState *st, const VSAPI *vsapi, char *err, size_t size) {
    pthread_once(&py_once, py_load);
    if (!py.ok || !py.IsInitialized()) {
        snprintf(err, size, NAME ": Python is not available in this process; core.uav.Upscale runs in "
                 "Python: use it from a .vpy script (vspipe) or from Python with vs-uav installed");
        return -1;
    }
    int gil = py.GILState_Ensure();
    int rc = -1;
    PyObject *mod = NULL, *fn = NULL, *res = NULL;
    VSFunction *already = take_impl(st, vsapi);
    if (already) { /* another thread registered while this one waited for the GIL */
        vsapi->freeFunction(already);
        rc = 0;
    } else if (!(mod = py.Import_ImportModule(BRIDGE_MODULE))) {
        char msg[MSG_MAX];
        py_error(msg, sizeof msg);
        snprintf(err, size, NAME ": cannot import " BRIDGE_MODULE " (%s); install vs-uav into the Python that "
                 "runs this script", msg);
    } else if (!(fn = py.Object_GetAttrString(mod, "_register_from_native")) ||
               !(res = py.Object_CallObject(fn, NULL))) {
        char msg[MSG_MAX];
        py_error(msg, sizeof msg);
        snprintf(err, size, NAME ": %s", msg);
    } else if (py_text(res, err, size) && err[0]) {
        /* _register_from_native returns "" on success or a complete message */
    } else {
        rc = 0;
    }
    py_decref(res);
    py_decref(fn);
    py_decref(mod);
    if (rc == 0) {
        VSFunction *f = take_impl(st, vsapi);
        if (f) {
            vsapi->freeFunction(f); /* freeing under the GIL is fine: the GIL is reentrant */
        } else {
            rc = -1;
            snprintf(err, size, NAME ": the Python side registered with a different core than the one this "
                     "call runs in; call core.uav.Upscale from the environment that owns the clip");
        }
    }
    py.GILState_Release(gil);
    return rc;
}

/* -- the plugin functions ---------------------------------------------------------------- */

/* An error as one line starting with "uav.Upscale: ". An exception that escaped Python
 * arrives with VapourSynth's traceback dump: only its last line (the exception) is kept. */
static const char *one_line(const char *e, char *buf, size_t size) {
    const char *msg = e, *end = e + strlen(e);
    if (strstr(e, "Traceback (most recent call last)")) {
        while (end > e && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
            --end;
        msg = end;
        while (msg > e && msg[-1] != '\n')
            --msg;
        static const char vs_error[] = "vapoursynth.Error: ";
        if (strncmp(msg, vs_error, sizeof vs_error - 1) == 0)
            msg += sizeof vs_error - 1;
    }
    int len = (int)(end - msg);
    if (strncmp(msg, NAME ":", sizeof NAME) == 0)
        snprintf(buf, size, "%.*s", len, msg);
    else
        snprintf(buf, size, NAME ": %.*s", len, msg);
    for (char *c = buf; *c; ++c)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    return buf;
}

static void VS_CC upscale(const VSMap *in, VSMap *out, void *userData, VSCore *core, const VSAPI *vsapi) {
    (void)core;
    CoreState *st = (CoreState *)userData;
    char err[MSG_MAX];
    VSFunction *f = take_impl(st, vsapi);
    if (!f) {
        if (register_from_python(st, vsapi, err, sizeof err)) {
            vsapi->mapSetError(out, err);
            return;
        }
        if (!(f = take_impl(st, vsapi))) {
            vsapi->mapSetError(out, NAME ": the Python implementation was unregistered (environment destroyed)");
            return;
        }
    }
    /* Our own reference keeps the function alive even if BridgeUnregister runs meanwhile. */
    VSMap *res = vsapi->createMap();
    vsapi->callFunction(f, in, res);
    vsapi->freeFunction(f);

    int numerr = 0;
    const char *e = vsapi->mapGetError(res);
    if (!e && vsapi->mapGetType(res, "error") == ptData) /* the bridge's clean, one-line error */
        e = vsapi->mapGetData(res, "error", 0, &numerr);
    if (e) {
        vsapi->mapSetError(out, one_line(e, err, sizeof err));
    } else {
        const char *key = vsapi->mapNumElements(res, "clip") >= 0 ? "clip" : "val";
        VSNode *node = vsapi->mapGetType(res, key) == ptVideoNode ? vsapi->mapGetNode(res, key, 0, &numerr) : NULL;
        if (node)
            vsapi->mapConsumeNode(out, "clip", node, maReplace);
        else
            vsapi->mapSetError(out, NAME ": the Python implementation returned no video clip");
    }
    vsapi->freeMap(res);
}

static void VS_CC register_impl(const VSMap *in, VSMap *out, void *userData, VSCore *core, const VSAPI *vsapi) {
    (void)out;
    (void)core;
    int numerr = 0;
    VSFunction *f = vsapi->mapGetFunction(in, "func", 0, &numerr); /* a new reference */
    swap_impl((CoreState *)userData, f, vsapi);
}

static void VS_CC unregister_impl(const VSMap *in, VSMap *out, void *userData, VSCore *core, const VSAPI *vsapi) {
    (void)in;
    (void)out;
    (void)core;
    swap_impl((CoreState *)userData, NULL, vsapi);
}

/* -- uav.Guard: frame errors without a Python traceback ------------------------------------ */

static const VSFrame *VS_CC guard_get_frame(int n, int activationReason, void *instanceData, void **frameData,
                                           VSFrameContext *frameCtx, VSCore *core, const VSAPI *vsapi) {
    (void)frameData;
    (void)core;
    VSNode *node = (VSNode *)instanceData;
    if (activationReason == arInitial) {
        vsapi->requestFrameFilter(n, node, frameCtx);
    } else if (activationReason == arAllFramesReady) {
        const VSFrame *frame = vsapi->getFrameFilter(n, node, frameCtx);
        int err = 0;
        const char *msg = vsapi->mapGetData(vsapi->getFramePropertiesRO(frame), "_UAVError", 0, &err);
        if (!err && msg) {
            vsapi->setFilterError(msg, frameCtx);
            vsapi->freeFrame(frame);
            return NULL;
        }
        return frame;
    }
    return NULL;
}

static void VS_CC guard_free(void *instanceData, VSCore *core, const VSAPI *vsapi) {
    (void)core;
    vsapi->freeNode((VSNode *)instanceData);
}

static void VS_CC guard_create(const VSMap *in, VSMap *out, void *userData, VSCore *core, const VSAPI *vsapi) {
    (void)userData;
    VSNode *node = vsapi->mapGetNode(in, "clip", 0, NULL);
    VSFilterDependency deps[] = {{node, rpStrictSpatial}};
    vsapi->createVideoFilter(out, "Guard", vsapi->getVideoInfo(node), guard_get_frame, guard_free, fmParallel, deps,
                             1, node, core);
}

VS_EXTERNAL_API(void) VapourSynthPluginInit2(VSPlugin *plugin, const VSPLUGINAPI *vspapi) {
    CoreState *st = (CoreState *)calloc(1, sizeof *st);
    if (!st)
        return;
    pthread_mutex_init(&st->lock, NULL);
    vspapi->configPlugin("com.vs-uav.uav", "uav", "Upscale-A-Video 4x video super-resolution (vs-uav)",
                         VS_MAKE_VERSION(UAV_VERSION_MAJOR, UAV_VERSION_MINOR), VAPOURSYNTH_API_VERSION, 0, plugin);
    vspapi->registerFunction("Upscale", UAV_UPSCALE_ARGS, UAV_UPSCALE_RETURN, upscale, st, plugin);
    vspapi->registerFunction("BridgeRegister", "func:func;", "", register_impl, st, plugin);
    vspapi->registerFunction("BridgeUnregister", "", "", unregister_impl, st, plugin);
    vspapi->registerFunction("Guard", "clip:vnode;", "clip:vnode;", guard_create, NULL, plugin);
}
