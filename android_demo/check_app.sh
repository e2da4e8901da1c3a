#!/usr/bin/env bash
# What can be checked of android_demo/app/ without the Android Gradle plugin, SDK or Google Maven (none reachable
# here): aapt (Debian's, Android 10) compiles the manifest and every resource against the platform's framework
# resources (Debian's android-framework-res: framework-res.apk, API 29), as the Gradle build's resource step would.
# A bad @string/@layout/@style reference, an attribute no platform view has (a library's app:... attribute), or
# malformed XML fails. Then two checks aapt's output makes possible:
#   - every R.<type>.<name> the app's Kotlin uses exists in the R class aapt generated;
#   - every activity the manifest declares has a Kotlin class of that name in the app's sources.
# The Kotlin itself is not compiled (it needs android.jar and the runtime AARs); its logic lives in core/, which
# run_tests.sh compiles and tests.
#
# Usage: check_app.sh [--manifest FILE] [--res DIR] [--sources DIR]   (defaults: app/src/main/...)
# Prints "app check: ok ..." or the problems and "app check: FAILED"; exit 0 / 1, 2 when aapt or the framework
# resources are missing (run android_demo/install_toolchain.sh).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MAIN="$HERE/app/src/main"
MANIFEST="$MAIN/AndroidManifest.xml"
RES="$MAIN/res"
SOURCES="$MAIN/kotlin"
GRADLE="$HERE/app/build.gradle.kts"
AAPT="${AAPT:-aapt}"
FRAMEWORK_RES="${ANDROID_FRAMEWORK_RES:-/usr/share/android-framework-res/framework-res.apk}"

while [ $# -gt 0 ]; do
    case "$1" in
        --manifest) MANIFEST="$2"; shift 2 ;;
        --res) RES="$2"; shift 2 ;;
        --sources) SOURCES="$2"; shift 2 ;;
        *) echo "check_app.sh: unknown argument $1 (use --manifest FILE, --res DIR, --sources DIR)" >&2; exit 2 ;;
    esac
done

if ! command -v "$AAPT" >/dev/null 2>&1 || [ ! -f "$FRAMEWORK_RES" ]; then
    echo "error: aapt ($AAPT) or the framework resources ($FRAMEWORK_RES) are missing; run android_demo/install_toolchain.sh" >&2
    echo "app check: FAILED"
    exit 2
fi

# The package is the Gradle namespace (AGP writes it into the merged manifest); the SDK levels are the Gradle ones.
gradle_value() { sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"\{0,1\}\([A-Za-z0-9_.]*\)\"\{0,1\}.*/\1/p" "$GRADLE" | head -1; }
NAMESPACE="$(gradle_value namespace)"
MIN_SDK="$(gradle_value minSdk)"
TARGET_SDK="$(gradle_value targetSdk)"
if [ -z "$NAMESPACE" ] || [ -z "$MIN_SDK" ] || [ -z "$TARGET_SDK" ]; then
    echo "error: $GRADLE does not set namespace, minSdk and targetSdk as plain values" >&2
    echo "app check: FAILED"
    exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
problems=()

if grep -q '<manifest[^>]*package=' "$MANIFEST"; then
    cp "$MANIFEST" "$WORK/AndroidManifest.xml"
else
    sed "0,/<manifest /s//<manifest package=\"$NAMESPACE\" /" "$MANIFEST" > "$WORK/AndroidManifest.xml"
fi

mkdir -p "$WORK/gen"
if ! "$AAPT" package -f -m -M "$WORK/AndroidManifest.xml" -S "$RES" -I "$FRAMEWORK_RES" -J "$WORK/gen" \
        -F "$WORK/resources.ap_" --min-sdk-version "$MIN_SDK" --target-sdk-version "$TARGET_SDK" \
        > "$WORK/aapt.txt" 2>&1; then
    # aapt names the copy it compiled; name the file the user edits
    sed "s|$WORK/AndroidManifest.xml|$MANIFEST|g; /^$/d" "$WORK/aapt.txt" >&2
    problems+=("aapt rejected the manifest or resources (above)")
else
    R_JAVA="$WORK/gen/${NAMESPACE//.//}/R.java"
    # R references in the app's Kotlin (android.R.* is the platform's), each must be a field aapt generated
    refs="$(grep -rhoE '(^|[^.A-Za-z0-9_])R\.[a-z]+\.[A-Za-z0-9_]+' "$SOURCES" --include='*.kt' | sed -E 's/^[^R]*//' | sort -u)"
    nrefs=0
    for ref in $refs; do
        nrefs=$((nrefs + 1))
        type="${ref#R.}"; type="${type%%.*}"; name="${ref##*.}"
        # the class of that type, then the field in it
        if ! awk -v t="$type" -v n="$name" '
                $0 ~ "public static final class " t " " { inside = 1; next }
                inside && /^    }/ { inside = 0 }
                inside && $0 ~ "public static final int " n "=" { found = 1 }
                END { exit found ? 0 : 1 }' "$R_JAVA"; then
            where="$(grep -rlE "(^|[^.A-Za-z0-9_])R\.$type\.$name([^A-Za-z0-9_]|$)" "$SOURCES" --include='*.kt' | head -3 | tr '\n' ' ' | sed 's/ $//')"
            problems+=("$ref is used in $where but no resource defines it")
        fi
    done
    # activities of the compiled manifest -> a Kotlin class of that name (".X" is relative to the namespace)
    activities="$("$AAPT" dump xmltree "$WORK/resources.ap_" AndroidManifest.xml 2>/dev/null | awk '
        /E: (activity|activity-alias|service|receiver|provider) / { want = 1; next }
        want && /A: android:name\(/ { if (match($0, /"[^"]*"/)) print substr($0, RSTART + 1, RLENGTH - 2); want = 0 }
        /E: / { want = 0 }')"
    nact=0
    for a in $activities; do
        nact=$((nact + 1))
        case "$a" in .*) fq="$NAMESPACE$a" ;; *.*) fq="$a" ;; *) fq="$NAMESPACE.$a" ;; esac
        pkg="${fq%.*}"; cls="${fq##*.}"
        if ! grep -rlE "^package $pkg\$" "$SOURCES" --include='*.kt' 2>/dev/null \
                | xargs -r grep -lE "^(open |abstract )?class $cls\b" >/dev/null 2>&1; then
            problems+=("the manifest declares $fq but no Kotlin source in $SOURCES defines class $cls in package $pkg")
        fi
    done
fi

if [ ${#problems[@]} -gt 0 ]; then
    for p in "${problems[@]}"; do echo "error: $p" >&2; done
    echo "app check: FAILED"
    exit 1
fi
nres="$(find "$RES" -type f -name '*.xml' | wc -l)"
api="$("$AAPT" dump badging "$FRAMEWORK_RES" 2>/dev/null | sed -n "s/^sdkVersion:'\([0-9]*\)'.*/\1/p" | head -1)"
echo "app check: ok (aapt compiled the manifest and $nres resource files against $(basename "$FRAMEWORK_RES"), API ${api:-?};" \
     "$nrefs R references resolve; the manifest's $nact components have classes)"
