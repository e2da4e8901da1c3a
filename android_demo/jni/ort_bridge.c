/*
 * A small JNI bridge from the Kotlin core (dev.squeezemobile.core.OrtNative) to ONNX Runtime's C API, so the JVM
 * tests can run a real exported .onnx without the onnxruntime Java/Android packages (not reachable here).
 *
 *   create(modelPath, intraOpThreads) -> handle      one session (CPU execution provider, sequential executor)
 *   inputNames(handle) / outputNames(handle)         the graph's tensor names
 *   run(handle, inputName, array, shape, outputName) -> Object[] { values, long[] shape }
 *   runNamed(handle, String[] inputNames, Object[] arrays, long[][] shapes, String[] outputNames)
 *       -> Object[] { values of each output.., long[] shape of each output.. }
 *   release(handle)
 *
 * Input arrays: float[] float32, long[] int64, int[] int32, byte[] uint8 tensors; outputs come back as float[] (float32),
 * long[] (int64) or int[] (int32), any other output type is an error. Every OrtStatus error becomes a
 * dev.squeezemobile.core.OrtException with ONNX Runtime's message. Built by android_demo/run_tests.sh:
 *   gcc -shared -fPIC -I<jni.h dirs> -I<onnxruntime headers> ort_bridge.c -L<lib dir> -l:libonnxruntime.so.1 -Wl,-rpath,<lib dir>
 * The header's ORT_API_VERSION must be one the library supports (the C API is backward compatible: an older
 * header against a newer library is fine); create() says so plainly otherwise.
 */
#include <jni.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

#define EXC "dev/squeezemobile/core/OrtException"

typedef struct {
    const OrtApi *api;
    OrtEnv *env;
    OrtSession *session;
    OrtAllocator *allocator; /* the default CPU allocator (not owned) */
} Bridge;

static void throw_msg(JNIEnv *jni, const char *what, const char *detail) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    jclass cls = (*jni)->FindClass(jni, EXC);
    if (cls == NULL) return; /* NoClassDefFoundError is pending */
    (*jni)->ThrowNew(jni, cls, buf);
}

/* Turns a non-NULL OrtStatus into a pending Kotlin exception (and releases it); returns 1 when it was an error. */
static int failed(JNIEnv *jni, const OrtApi *api, OrtStatus *status, const char *what) {
    if (status == NULL) return 0;
    char detail[1536];
    snprintf(detail, sizeof detail, "%s (ORT error code %d)", api->GetErrorMessage(status), (int)api->GetErrorCode(status));
    api->ReleaseStatus(status);
    /* one line: ORT's multi-line messages (e.g. invalid dimensions) with their line breaks and indents as one space */
    size_t w = 0;
    for (size_t r = 0; detail[r] != '\0'; r++) {
        char c = (detail[r] == '\n' || detail[r] == '\r' || detail[r] == '\t') ? ' ' : detail[r];
        if (c != ' ' || (w > 0 && detail[w - 1] != ' ')) detail[w++] = c;
    }
    detail[w] = '\0';
    throw_msg(jni, what, detail);
    return 1;
}

static const OrtApi *get_api(JNIEnv *jni) {
    const OrtApiBase *base = OrtGetApiBase();
    const OrtApi *api = base->GetApi(ORT_API_VERSION);
    if (api == NULL) {
        char detail[256];
        snprintf(detail, sizeof detail, "the ONNX Runtime library (version %s) does not support C API version %d of the "
                 "header this bridge was compiled with; use an older onnxruntime_c_api.h or a newer library",
                 base->GetVersionString(), ORT_API_VERSION);
        throw_msg(jni, "ONNX Runtime C API unavailable", detail);
    }
    return api;
}

static void bridge_free(Bridge *b) {
    if (b == NULL) return;
    if (b->session) b->api->ReleaseSession(b->session);
    if (b->env) b->api->ReleaseEnv(b->env);
    free(b);
}

static Bridge *handle_of(JNIEnv *jni, jlong handle) {
    if (handle == 0) throw_msg(jni, "the ONNX Runtime session is closed", NULL);
    return (Bridge *)(intptr_t)handle;
}

JNIEXPORT jstring JNICALL Java_dev_squeezemobile_core_OrtNative_version(JNIEnv *jni, jclass cls) {
    (void)cls;
    char buf[128];
    snprintf(buf, sizeof buf, "%s (C API %d)", OrtGetApiBase()->GetVersionString(), ORT_API_VERSION);
    return (*jni)->NewStringUTF(jni, buf);
}

JNIEXPORT jlong JNICALL Java_dev_squeezemobile_core_OrtNative_create(JNIEnv *jni, jclass cls, jstring jpath, jint threads) {
    (void)cls;
    const OrtApi *api = get_api(jni);
    if (api == NULL) return 0;
    Bridge *b = calloc(1, sizeof *b);
    if (b == NULL) { throw_msg(jni, "out of memory", NULL); return 0; }
    b->api = api;
    OrtSessionOptions *opts = NULL;
    const char *path = (*jni)->GetStringUTFChars(jni, jpath, NULL);
    if (path == NULL) { free(b); return 0; }
    char what[1200];
    snprintf(what, sizeof what, "cannot load the ONNX model %s", path);
    int bad = failed(jni, api, api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "squeeze-mobile", &b->env), "cannot create the ONNX Runtime environment")
        || failed(jni, api, api->CreateSessionOptions(&opts), "cannot create session options")
        || failed(jni, api, api->SetIntraOpNumThreads(opts, threads), "bad intra-op thread count")
        || failed(jni, api, api->SetInterOpNumThreads(opts, 1), "bad inter-op thread count")
        || failed(jni, api, api->SetSessionExecutionMode(opts, ORT_SEQUENTIAL), "cannot set the execution mode")
        /* denormals flushed on the pool threads: masked softmax rows end in denormals (slow on x86 hosts) */
        || failed(jni, api, api->AddSessionConfigEntry(opts, "session.set_denormal_as_zero", "1"), "cannot set denormal flushing")
        || failed(jni, api, api->CreateSession(b->env, path, opts, &b->session), what)
        || failed(jni, api, api->GetAllocatorWithDefaultOptions(&b->allocator), "no default allocator");
    (*jni)->ReleaseStringUTFChars(jni, jpath, path);
    if (opts) api->ReleaseSessionOptions(opts);
    if (bad) { bridge_free(b); return 0; }
    return (jlong)(intptr_t)b;
}

static jobjectArray names(JNIEnv *jni, jlong handle, int outputs) {
    Bridge *b = handle_of(jni, handle);
    if (b == NULL) return NULL;
    const OrtApi *api = b->api;
    size_t n = 0;
    if (failed(jni, api, outputs ? api->SessionGetOutputCount(b->session, &n) : api->SessionGetInputCount(b->session, &n),
               "cannot count the graph's tensors")) return NULL;
    jobjectArray out = (*jni)->NewObjectArray(jni, (jsize)n, (*jni)->FindClass(jni, "java/lang/String"), NULL);
    for (size_t i = 0; out != NULL && i < n; i++) {
        char *name = NULL;
        if (failed(jni, api, outputs ? api->SessionGetOutputName(b->session, i, b->allocator, &name)
                                     : api->SessionGetInputName(b->session, i, b->allocator, &name), "cannot read a tensor name"))
            return NULL;
        jstring s = (*jni)->NewStringUTF(jni, name);
        b->allocator->Free(b->allocator, name);
        if (s == NULL) return NULL;
        (*jni)->SetObjectArrayElement(jni, out, (jsize)i, s);
        (*jni)->DeleteLocalRef(jni, s);
    }
    return out;
}

JNIEXPORT jobjectArray JNICALL Java_dev_squeezemobile_core_OrtNative_inputNames(JNIEnv *jni, jclass cls, jlong handle) {
    (void)cls;
    return names(jni, handle, 0);
}

JNIEXPORT jobjectArray JNICALL Java_dev_squeezemobile_core_OrtNative_outputNames(JNIEnv *jni, jclass cls, jlong handle) {
    (void)cls;
    return names(jni, handle, 1);
}

/* A Java array (float[] float32, long[] int64, int[] int32, byte[] uint8) of shape jshape as a new tensor in *out. */
static int make_input(JNIEnv *jni, Bridge *b, const char *name, jobject data, jlongArray jshape, OrtValue **out) {
    const OrtApi *api = b->api;
    static const char *const classes[4] = {"[F", "[J", "[I", "[B"};
    static const ONNXTensorElementDataType types[4] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
                                                       ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8};
    int kind = -1;
    for (int k = 0; k < 4 && kind < 0 && data != NULL; k++)
        if ((*jni)->IsInstanceOf(jni, data, (*jni)->FindClass(jni, classes[k]))) kind = k;
    if (kind < 0) { throw_msg(jni, "an input must be a float[] (float32), long[] (int64), int[] (int32) or byte[] (uint8)", name); return 1; }
    if (jshape == NULL) { throw_msg(jni, "no shape for input", name); return 1; }
    jsize rank = (*jni)->GetArrayLength(jni, jshape);
    if (rank > 16) { throw_msg(jni, "input rank above 16", name); return 1; }
    int64_t shape[16];
    jlong js[16];
    (*jni)->GetLongArrayRegion(jni, jshape, 0, rank, js);
    long long count = 1;
    for (jsize i = 0; i < rank; i++) {
        if (js[i] < 0) { throw_msg(jni, "negative dimension in the input shape", name); return 1; }
        shape[i] = js[i];
        count *= js[i];
    }
    jsize length = (*jni)->GetArrayLength(jni, (jarray)data);
    if (count != (long long)length) {
        char detail[400];
        snprintf(detail, sizeof detail, "input '%s': the shape holds %lld elements, the array %d", name, count, (int)length);
        throw_msg(jni, "input size does not match its shape", detail);
        return 1;
    }
    void *dst = NULL;
    if (failed(jni, api, api->CreateTensorAsOrtValue(b->allocator, shape, (size_t)rank, types[kind], out), "cannot allocate an input tensor")
        || failed(jni, api, api->GetTensorMutableData(*out, &dst), "cannot access an input tensor")) return 1;
    if (kind == 0) (*jni)->GetFloatArrayRegion(jni, (jfloatArray)data, 0, length, (jfloat *)dst);
    else if (kind == 1) (*jni)->GetLongArrayRegion(jni, (jlongArray)data, 0, length, (jlong *)dst);
    else if (kind == 2) (*jni)->GetIntArrayRegion(jni, (jintArray)data, 0, length, (jint *)dst);
    else (*jni)->GetByteArrayRegion(jni, (jbyteArray)data, 0, length, (jbyte *)dst);
    return 0;
}

/* An output tensor (float32 / int64 / int32) as result[i] = float[] / long[] / int[] values, result[n + i] = long[] shape. */
static int put_output(JNIEnv *jni, Bridge *b, const char *name, OrtValue *value, jobjectArray result, jsize i, jsize n) {
    const OrtApi *api = b->api;
    OrtTensorTypeAndShapeInfo *info = NULL;
    ONNXTensorElementDataType type;
    size_t rank = 0, count = 0;
    int64_t dims[16];
    void *src = NULL;
    int bad = failed(jni, api, api->GetTensorTypeAndShape(value, &info), "cannot read an output's type")
        || failed(jni, api, api->GetTensorElementType(info, &type), "cannot read an output's element type")
        || failed(jni, api, api->GetDimensionsCount(info, &rank), "cannot read an output's rank")
        || failed(jni, api, api->GetTensorShapeElementCount(info, &count), "cannot read an output's size");
    if (!bad && rank > 16) { throw_msg(jni, "output rank above 16", name); bad = 1; }
    bad = bad || failed(jni, api, api->GetDimensions(info, dims, rank), "cannot read an output's shape")
              || failed(jni, api, api->GetTensorMutableData(value, &src), "cannot access an output tensor");
    if (info) api->ReleaseTensorTypeAndShapeInfo(info);
    if (bad) return 1;
    jarray values = NULL;
    jsize len = (jsize)count;
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        if ((values = (*jni)->NewFloatArray(jni, len))) (*jni)->SetFloatArrayRegion(jni, (jfloatArray)values, 0, len, (const jfloat *)src);
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
        if ((values = (*jni)->NewLongArray(jni, len))) (*jni)->SetLongArrayRegion(jni, (jlongArray)values, 0, len, (const jlong *)src);
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
        if ((values = (*jni)->NewIntArray(jni, len))) (*jni)->SetIntArrayRegion(jni, (jintArray)values, 0, len, (const jint *)src);
    } else {
        char detail[400];
        snprintf(detail, sizeof detail, "output '%s' has ONNX element type %d", name, (int)type);
        throw_msg(jni, "the output is not float32, int64 or int32", detail);
        return 1;
    }
    jlongArray jdims = (*jni)->NewLongArray(jni, (jsize)rank);
    if (values == NULL || jdims == NULL) return 1;
    jlong jd[16];
    for (size_t k = 0; k < rank; k++) jd[k] = dims[k];
    (*jni)->SetLongArrayRegion(jni, jdims, 0, (jsize)rank, jd);
    (*jni)->SetObjectArrayElement(jni, result, i, values);
    (*jni)->SetObjectArrayElement(jni, result, n + i, jdims);
    (*jni)->DeleteLocalRef(jni, values);
    (*jni)->DeleteLocalRef(jni, jdims);
    return 0;
}

/* One Run with named inputs and outputs; returns Object[2 * outputs]: the values of each output, then their shapes. */
static jobjectArray run_named(JNIEnv *jni, jlong handle, jobjectArray jin, jobjectArray jdata, jobjectArray jshapes,
                              jobjectArray jout, int single) {
    Bridge *b = handle_of(jni, handle);
    if (b == NULL) return NULL;
    const OrtApi *api = b->api;
    jsize n_in = (*jni)->GetArrayLength(jni, jin), n_out = (*jni)->GetArrayLength(jni, jout);
    if ((*jni)->GetArrayLength(jni, jdata) != n_in || (*jni)->GetArrayLength(jni, jshapes) != n_in) {
        throw_msg(jni, "input names, arrays and shapes differ in number", NULL);
        return NULL;
    }
    if ((*jni)->EnsureLocalCapacity(jni, n_in + n_out + 16) != 0) return NULL; /* the names' local references */
    /* sized per call: a real decoder export has hundreds of inputs (the 30-layer SmolLM2's squeezed graph: 366) */
    size_t n_all = (size_t)n_in + (size_t)n_out;
    jstring *strs = calloc(n_all ? n_all : 1, sizeof *strs);
    const char **names = calloc(n_all ? n_all : 1, sizeof *names);
    OrtValue **values = calloc(n_all ? n_all : 1, sizeof *values);
    if (strs == NULL || names == NULL || values == NULL) {
        free(strs);
        free((void *)names);
        free(values);
        throw_msg(jni, "out of memory for the run's tensor lists", NULL);
        return NULL;
    }
    jstring *in_str = strs, *out_str = strs + n_in;
    const char **in_names = names, **out_names = names + n_in;
    OrtValue **inputs = values, **outputs = values + n_in;
    jobjectArray result = NULL;
    int bad = 0;
    for (jsize i = 0; !bad && i < n_out; i++) {
        out_str[i] = (jstring)(*jni)->GetObjectArrayElement(jni, jout, i);
        bad = out_str[i] == NULL || (out_names[i] = (*jni)->GetStringUTFChars(jni, out_str[i], NULL)) == NULL;
    }
    for (jsize i = 0; !bad && i < n_in; i++) {
        in_str[i] = (jstring)(*jni)->GetObjectArrayElement(jni, jin, i);
        bad = in_str[i] == NULL || (in_names[i] = (*jni)->GetStringUTFChars(jni, in_str[i], NULL)) == NULL;
        if (!bad) {
            jobject data = (*jni)->GetObjectArrayElement(jni, jdata, i);
            jlongArray shape = (jlongArray)(*jni)->GetObjectArrayElement(jni, jshapes, i);
            bad = make_input(jni, b, in_names[i], data, shape, &inputs[i]);
            (*jni)->DeleteLocalRef(jni, data);
            (*jni)->DeleteLocalRef(jni, shape);
        }
    }
    if (bad) {
        if (!(*jni)->ExceptionCheck(jni)) throw_msg(jni, "a tensor name is null", NULL);
        goto done;
    }
    char what[600];
    if (single) snprintf(what, sizeof what, "ONNX Runtime run failed (input '%s', output '%s')", in_names[0], out_names[0]);
    else snprintf(what, sizeof what, "ONNX Runtime run failed (%d inputs, %d outputs)", (int)n_in, (int)n_out);
    if (failed(jni, api, api->Run(b->session, NULL, in_names, (const OrtValue *const *)inputs, (size_t)n_in, out_names,
                                  (size_t)n_out, outputs), what)) goto done;
    result = (*jni)->NewObjectArray(jni, 2 * n_out, (*jni)->FindClass(jni, "java/lang/Object"), NULL);
    for (jsize i = 0; result != NULL && i < n_out; i++)
        if (put_output(jni, b, out_names[i], outputs[i], result, i, n_out)) result = NULL;

done:
    for (jsize i = 0; i < n_out; i++) {
        if (outputs[i]) api->ReleaseValue(outputs[i]);
        if (out_names[i]) (*jni)->ReleaseStringUTFChars(jni, out_str[i], out_names[i]);
        if (out_str[i]) (*jni)->DeleteLocalRef(jni, out_str[i]);
    }
    for (jsize i = 0; i < n_in; i++) {
        if (inputs[i]) api->ReleaseValue(inputs[i]);
        if (in_names[i]) (*jni)->ReleaseStringUTFChars(jni, in_str[i], in_names[i]);
        if (in_str[i]) (*jni)->DeleteLocalRef(jni, in_str[i]);
    }
    free(strs);
    free((void *)names);
    free(values);
    return result;
}

JNIEXPORT jobjectArray JNICALL Java_dev_squeezemobile_core_OrtNative_run(JNIEnv *jni, jclass cls, jlong handle, jstring jin,
                                                                          jobject data, jlongArray jshape, jstring jout) {
    (void)cls;
    jclass str = (*jni)->FindClass(jni, "java/lang/String"), obj = (*jni)->FindClass(jni, "java/lang/Object");
    jobjectArray ins = (*jni)->NewObjectArray(jni, 1, str, jin), outs = (*jni)->NewObjectArray(jni, 1, str, jout);
    jobjectArray datas = (*jni)->NewObjectArray(jni, 1, obj, data), shapes = (*jni)->NewObjectArray(jni, 1, obj, jshape);
    if (ins == NULL || outs == NULL || datas == NULL || shapes == NULL) return NULL;
    return run_named(jni, handle, ins, datas, shapes, outs, 1);
}

JNIEXPORT jobjectArray JNICALL Java_dev_squeezemobile_core_OrtNative_runNamed(JNIEnv *jni, jclass cls, jlong handle,
                                                                               jobjectArray jin, jobjectArray jdata,
                                                                               jobjectArray jshapes, jobjectArray jout) {
    (void)cls;
    return run_named(jni, handle, jin, jdata, jshapes, jout, 0);
}

JNIEXPORT void JNICALL Java_dev_squeezemobile_core_OrtNative_release(JNIEnv *jni, jclass cls, jlong handle) {
    (void)jni;
    (void)cls;
    bridge_free((Bridge *)(intptr_t)handle);
}
