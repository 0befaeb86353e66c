# Makes package.json and package-lock.json digestible for nixpkgs' `importNpmLock`, with
# builtins only (evaluated by test/unit/nix.test.ts without nixpkgs).
#
# Two things in this repository's lock need help:
#
# 1. No `resolved` URLs. The lock was written with `omit-lockfile-registry-resolved`, so
#    registry packages carry only `version` and `integrity`. importNpmLock fetches nothing for
#    an entry without `resolved`, and the offline `npm install` in the build then fails. The
#    URL is derived the way npm derives it for the public registry:
#    https://registry.npmjs.org/<name>/-/<name without scope>-<version>.tgz, where <name> is
#    the entry's `name` (set for aliases such as matrix-bot-sdk -> @vector-im/matrix-bot-sdk)
#    or the path after the last `node_modules/`. The entry's `integrity` still pins the bytes.
#
# 2. The `file:` override of @matrix-org/matrix-sdk-crypto-nodejs (a local stub for a native
#    module that downloads binaries). npm recorded it as a link to
#    node_modules/matrix-bot-sdk/stubs/matrix-sdk-crypto-nodejs, a path that does not exist
#    (the override is resolved relative to the dependent package there), so importNpmLock,
#    which copies every relative `resolved` path into the store, would fail on it. Each
#    `file:` override is pointed at its real, root-relative directory instead, and the bogus
#    entry is dropped. npm re-resolves the override itself during the offline install and
#    links the package to stubs/matrix-sdk-crypto-nodejs with a relative symlink, as in a
#    developer checkout; the package ships stubs/ (package.json "files"), so the link resolves
#    inside the installed package too.
let
  inherit (builtins)
    attrNames
    elemAt
    filter
    listToAttrs
    map
    match
    removeAttrs
    substring
    stringLength
    ;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  dropPrefix = prefix: s: substring (stringLength prefix) (stringLength s) s;

  registry = "https://registry.npmjs.org";

  # "node_modules/a/node_modules/@s/b" -> "@s/b"
  nameFromPath =
    path:
    let
      m = match "(.*/)?node_modules/((@[^/]+/)?[^/]+)" path;
    in
    if m == null then null else elemAt m 1;

  # "@scope/name" -> "name"
  unscoped =
    name:
    let
      m = match "@[^/]+/(.+)" name;
    in
    if m == null then name else elemAt m 0;

  tarballUrl = name: version: "${registry}/${name}/-/${unscoped name}-${version}.tgz";

  # A registry package that npm wrote without its tarball URL.
  needsUrl =
    path: entry:
    path != ""
    && !(entry ? resolved)
    && !(entry.link or false)
    && entry ? version
    && entry ? integrity
    && nameFromPath path != null;

  withUrl =
    path: entry:
    if needsUrl path entry then
      entry // { resolved = tarballUrl (entry.name or (nameFromPath path)) entry.version; }
    else
      entry;

  # "file:./stubs/x" -> "stubs/x"; null for anything that is not a local directory override.
  localOverridePath =
    spec:
    if builtins.isString spec && hasPrefix "file:" spec then
      let
        p = dropPrefix "file:" spec;
      in
      if hasPrefix "./" p then dropPrefix "./" p else p
    else
      null;

  fileOverrides =
    package:
    let
      overrides = package.overrides or { };
      names = filter (n: localOverridePath overrides.${n} != null) (attrNames overrides);
    in
    map (n: {
      name = n;
      path = localOverridePath overrides.${n};
    }) names;

  # Apply 1. and 2. to a parsed package-lock.json (lockfileVersion 2 or 3).
  fixLock =
    { package, packageLock }:
    let
      overrides = fileOverrides package;
      lockPackages = packageLock.packages;
      # Where npm put each overridden package, and where its link pointed.
      overriddenKey = o: "node_modules/${o.name}";
      bogusTargets = filter (t: t != null) (
        map (
          o:
          let
            entry = lockPackages.${overriddenKey o} or { };
          in
          if (entry.link or false) && (entry.resolved or o.path) != o.path then entry.resolved else null
        ) overrides
      );
      fixedOverrides = listToAttrs (
        map (o: {
          name = overriddenKey o;
          value = {
            resolved = o.path;
            link = true;
          };
        }) overrides
      );
      withUrls = builtins.mapAttrs withUrl (removeAttrs lockPackages bogusTargets);
    in
    packageLock // { packages = withUrls // fixedOverrides; };

  # Entries that still cannot be fetched: what the test asserts is empty.
  unfetchable =
    packageLock:
    filter (
      path:
      let
        entry = packageLock.packages.${path};
      in
      nameFromPath path != null && !(entry ? resolved) && !(entry.link or false)
    ) (attrNames packageLock.packages);
in
{
  inherit
    tarballUrl
    nameFromPath
    fixLock
    unfetchable
    ;
}
