/*
 * A small JNI bridge from the Kotlin core (dev.squeezemobile.core.OrtNative) to ONNX Runtime's C API, so the JVM
 * tests can run a real exported .onnx without the onnxruntime Java/Android packages (not reachable here).
 *
 *   create(modelPath, intraOpThreads) -> handle      one session (CPU execution provider, sequential executor)
 *   inputNames(handle) / outputNames(handle)         the graph's tensor names
 *   run(handle, inputName, float[] | byte[], shape, outputName) -> Object[] { float[] values, long[] shape }
 *   release(handle)
 *
 * byte[] inputs are uint8 tensors, float[] inputs float32; the output must be float32. Every OrtStatus error becomes a
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

JNIEXPORT jobjectArray JNICALL Java_dev_squeezemobile_core_OrtNative_run(JNIEnv *jni, jclass cls, jlong handle, jstring jin,
                                                                          jobject data, jlongArray jshape, jstring jout) {
    (void)cls;
    Bridge *b = handle_of(jni, handle);
    if (b == NULL) return NULL;
    const OrtApi *api = b->api;
    int is_float = (*jni)->IsInstanceOf(jni, data, (*jni)->FindClass(jni, "[F"));
    int is_byte = (*jni)->IsInstanceOf(jni, data, (*jni)->FindClass(jni, "[B"));
    if (!is_float && !is_byte) { throw_msg(jni, "the input must be a float[] (float32) or a byte[] (uint8)", NULL); return NULL; }
    jsize rank = (*jni)->GetArrayLength(jni, jshape);
    if (rank > 16) { throw_msg(jni, "input rank above 16", NULL); return NULL; }
    int64_t shape[16];
    jlong js[16];
    (*jni)->GetLongArrayRegion(jni, jshape, 0, rank, js);
    long long count = 1;
    for (jsize i = 0; i < rank; i++) {
        if (js[i] < 0) { throw_msg(jni, "negative dimension in the input shape", NULL); return NULL; }
        shape[i] = js[i];
        count *= js[i];
    }
    jsize length = (*jni)->GetArrayLength(jni, (jarray)data);
    if (count != (long long)length) {
        char detail[160];
        snprintf(detail, sizeof detail, "the shape holds %lld elements, the array %d", count, (int)length);
        throw_msg(jni, "input size does not match its shape", detail);
        return NULL;
    }

    OrtValue *input = NULL, *output = NULL;
    OrtTensorTypeAndShapeInfo *info = NULL;
    jobjectArray result = NULL;
    const char *in_name = (*jni)->GetStringUTFChars(jni, jin, NULL);
    const char *out_name = (*jni)->GetStringUTFChars(jni, jout, NULL);
    if (in_name == NULL || out_name == NULL) goto done;
    ONNXTensorElementDataType type = is_float ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    if (failed(jni, api, api->CreateTensorAsOrtValue(b->allocator, shape, (size_t)rank, type, &input), "cannot allocate the input tensor"))
        goto done;
    void *dst = NULL;
    if (failed(jni, api, api->GetTensorMutableData(input, &dst), "cannot access the input tensor")) goto done;
    if (is_float) (*jni)->GetFloatArrayRegion(jni, (jfloatArray)data, 0, length, (jfloat *)dst);
    else (*jni)->GetByteArrayRegion(jni, (jbyteArray)data, 0, length, (jbyte *)dst);

    char what[600];
    snprintf(what, sizeof what, "ONNX Runtime run failed (input '%s', output '%s')", in_name, out_name);
    const OrtValue *inputs[1] = {input};
    if (failed(jni, api, api->Run(b->session, NULL, &in_name, inputs, 1, &out_name, 1, &output), what)) goto done;

    if (failed(jni, api, api->GetTensorTypeAndShape(output, &info), "cannot read the output's type")) goto done;
    ONNXTensorElementDataType out_type;
    size_t out_rank = 0, n = 0;
    if (failed(jni, api, api->GetTensorElementType(info, &out_type), "cannot read the output's element type")
        || failed(jni, api, api->GetDimensionsCount(info, &out_rank), "cannot read the output's rank")
        || failed(jni, api, api->GetTensorShapeElementCount(info, &n), "cannot read the output's size")) goto done;
    if (out_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        char detail[64];
        snprintf(detail, sizeof detail, "ONNX element type %d", (int)out_type);
        throw_msg(jni, "the output is not float32", detail);
        goto done;
    }
    if (out_rank > 16) { throw_msg(jni, "output rank above 16", NULL); goto done; }
    int64_t dims[16];
    if (failed(jni, api, api->GetDimensions(info, dims, out_rank), "cannot read the output's shape")) goto done;
    float *values = NULL;
    if (failed(jni, api, api->GetTensorMutableData(output, (void **)&values), "cannot access the output tensor")) goto done;

    jfloatArray jvalues = (*jni)->NewFloatArray(jni, (jsize)n);
    jlongArray jdims = (*jni)->NewLongArray(jni, (jsize)out_rank);
    if (jvalues == NULL || jdims == NULL) goto done;
    (*jni)->SetFloatArrayRegion(jni, jvalues, 0, (jsize)n, values);
    jlong jd[16];
    for (size_t i = 0; i < out_rank; i++) jd[i] = dims[i];
    (*jni)->SetLongArrayRegion(jni, jdims, 0, (jsize)out_rank, jd);
    result = (*jni)->NewObjectArray(jni, 2, (*jni)->FindClass(jni, "java/lang/Object"), NULL);
    if (result != NULL) {
        (*jni)->SetObjectArrayElement(jni, result, 0, jvalues);
        (*jni)->SetObjectArrayElement(jni, result, 1, jdims);
    }

done:
    if (info) api->ReleaseTensorTypeAndShapeInfo(info);
    if (output) api->ReleaseValue(output);
    if (input) api->ReleaseValue(input);
    if (in_name) (*jni)->ReleaseStringUTFChars(jni, jin, in_name);
    if (out_name) (*jni)->ReleaseStringUTFChars(jni, jout, out_name);
    return result;
}

JNIEXPORT void JNICALL Java_dev_squeezemobile_core_OrtNative_release(JNIEnv *jni, jclass cls, jlong handle) {
    (void)jni;
    (void)cls;
    bridge_free((Bridge *)(intptr_t)handle);
}
