# hive-matrix built from this repository: `npm run build` (tsc -> dist/), dev dependencies
# pruned, `hive-matrix` on $out/bin.
#
# Dependencies come from package-lock.json through importNpmLock, so there is no dependency hash
# to update; nix/npm-lock.nix adds the tarball URLs the lock omits and repairs the recorded
# path of the local crypto stub (see the comment there).
#
#   pkgs.callPackage ./nix/package.nix { }
{
  lib,
  buildNpmPackage,
  importNpmLock,
  nodejs_22,
}:
let
  root = ../.;
  package = lib.importJSON ../package.json;
  packageFiles = lib.filter (line: line != "" && !lib.hasPrefix "#" line) (
    lib.splitString "\n" (lib.fileContents ./package-files.txt)
  );
  packageLock = (import ./npm-lock.nix).fixLock {
    inherit package;
    packageLock = lib.importJSON ../package-lock.json;
  };
in
buildNpmPackage {
  pname = package.name;
  inherit (package) version;

  # Only what the build reads (nix/package-files.txt, shared with CI), so that editing docs or
  # tests does not rebuild the package.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions (map (path: root + "/${path}") packageFiles);
  };

  # matrix-bot-sdk declares node >= 22.
  nodejs = nodejs_22;

  npmDeps = importNpmLock {
    # A plain path: importNpmLock copies the `file:` stub directory from here.
    npmRoot = root;
    inherit package packageLock;
  };
  npmConfigHook = importNpmLock.npmConfigHook;

  # `npm run build` is the default build script; bin/hive-matrix.js loads dist/cli.js.

  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    $out/bin/hive-matrix --help > /dev/null
    # Loads the config schema, the YAML library and the registration writer: the runtime
    # dependencies survived the prune.
    mkdir -p "$TMPDIR/check"
    printf '%s\n' '{"homeserver": {"url": "http://127.0.0.1:8008", "domain": "hive.example"}, "agents": {"stateRoot": "'"$TMPDIR"'/check/agents"}}' > "$TMPDIR/check/config.yaml"
    $out/bin/hive-matrix registration --config "$TMPDIR/check/config.yaml" --out "$TMPDIR/check/registration.yaml" > /dev/null
    grep -q 'as_token:' "$TMPDIR/check/registration.yaml"
    runHook postInstallCheck
  '';

  meta = {
    inherit (package) description;
    license = lib.licenses.asl20;
    mainProgram = "hive-matrix";
    platforms = lib.platforms.linux;
  };
}
