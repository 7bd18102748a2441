#!/usr/bin/env bash
# Builds and tests android_app's pure-JVM parts without Gradle or the Android SDK (neither can be had
# on the CI machine; a user with the SDK builds the whole app with Gradle, docs/android.md).
#
#   build.sh core        -> android_app/build/edgeprobe-core.jar   (runnable: java -jar ... serve ...)
#   build.sh test        -> compiles core's JUnit 5 tests, runs them; reports in android_app/build/test-results
#   build.sh app-check   -> type-checks app/'s Android adapters against API signatures generated from
#                           chaquopy-stubs-android (compile only, never packaged)
#
# Tools (found in this order): $KOTLINC, kotlinc on PATH, ~/.cache/edgeprobe/kotlin (npm kotlin-compiler,
# `make android-tools`); org.json: $JSON_JAR or Debian's libandroid-json-java (AOSP's org.json, the same
# classes Android ships, so core uses only what a phone has); JUnit: $JUNIT_STANDALONE or Debian's junit5.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/build"
mkdir -p "$out"

kotlinc="${KOTLINC:-}"
if [ -z "$kotlinc" ]; then
  if command -v kotlinc >/dev/null 2>&1; then kotlinc=kotlinc
  elif [ -x "$HOME/.cache/edgeprobe/kotlin/node_modules/kotlin-compiler/bin/kotlinc" ]; then
    kotlinc="$HOME/.cache/edgeprobe/kotlin/node_modules/kotlin-compiler/bin/kotlinc"
  else
    echo "build.sh: no kotlinc (set KOTLINC, or run 'make android-tools': npm install kotlin-compiler@2.4.20)" >&2
    exit 1
  fi
fi
json_jar="${JSON_JAR:-/usr/share/java/com.android.json.jar}"
junit="${JUNIT_STANDALONE:-/usr/share/java/junit-platform-console-standalone.jar}"
for f in "$json_jar"; do
  [ -f "$f" ] || { echo "build.sh: $f missing (apt-get install libandroid-json-java, or set JSON_JAR)" >&2; exit 1; }
done

sources() { find "$1" -name '*.kt' 2>/dev/null | sort; }

build_core() {
  local classes="$out/core-classes"
  rm -rf "$classes" && mkdir -p "$classes"
  # shellcheck disable=SC2046
  "$kotlinc" -jvm-target 17 -nowarn -cp "$json_jar" -d "$classes" $(sources "$here/core/src/main/kotlin")
  # one runnable jar: core, the Kotlin runtime and org.json (a JVM host has no org.json of its own)
  (cd "$classes" && unzip -qo "$json_jar" 'org/*')
  local stdlib
  stdlib="$(dirname "$(readlink -f "$(command -v "$kotlinc")")")/../lib/kotlin-stdlib.jar"
  (cd "$classes" && unzip -qo "$stdlib" 'kotlin/*' -x 'META-INF/*')
  printf 'Main-Class: dev.edgeprobe.core.MainKt\n' > "$out/manifest.txt"
  jar cfm "$out/edgeprobe-core.jar" "$out/manifest.txt" -C "$classes" .
  echo "built $out/edgeprobe-core.jar"
}

run_tests() {
  [ -f "$junit" ] || { echo "build.sh: $junit missing (apt-get install junit5, or set JUNIT_STANDALONE)" >&2; exit 1; }
  [ -f "$out/edgeprobe-core.jar" ] || build_core
  local classes="$out/test-classes"
  rm -rf "$classes" "$out/test-results" && mkdir -p "$classes" "$out/test-results"
  # shellcheck disable=SC2046
  "$kotlinc" -jvm-target 17 -nowarn -cp "$out/edgeprobe-core.jar:$junit" -d "$classes" \
    $(sources "$here/core/src/test/kotlin")
  java -jar "$junit" --class-path "$out/edgeprobe-core.jar:$classes" --scan-class-path "$classes" \
    --reports-dir "$out/test-results" --disable-banner --details=summary
}

case "${1:-}" in
  core) build_core ;;
  test) run_tests ;;
  app-check) KOTLINC="$kotlinc" JSON_JAR="$json_jar" bash "$here/tools/app_check.sh" ;;
  *) echo "usage: build.sh core|test|app-check" >&2; exit 2 ;;
esac
