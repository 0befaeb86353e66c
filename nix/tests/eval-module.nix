# Evaluates ../module.nix without nixpkgs, against a small stand-in for `lib` and `pkgs`.
#
# There is no module system here: option defaults are read from the declarations, the given
# `settings` are laid over them, and mkIf/mkMerge are resolved by hand. Types are not checked.
# What this does check is the module's own wiring: every attribute it reads exists, and the
# container, the services, the activation script and the gateway come out as intended.
# test/unit/nix.test.ts runs it with `nix-instantiate --eval --strict --json`.
{
  domain ? "hive.example",
  # services.hyperhive.matrix.* as a NixOS configuration would set them.
  settings ? { },
}:
let
  hlib = import ../lib.nix;
  inherit (hlib) recursiveUpdate;

  fakePackage = name: {
    outPath = "/nix/store/eval-${name}";
    meta.mainProgram = name;
  };

  option = attrs: attrs // { _type = "option"; };
  type = name: { inherit name; };

  lib = {
    mkOption = option;
    mkEnableOption = description: option {
      type = type "bool";
      default = false;
      inherit description;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    optional = cond: x: if cond then [ x ] else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionalString = cond: s: if cond then s else "";
    escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    getExe = pkg: "${pkg}/bin/${pkg.meta.mainProgram}";
    types = {
      str = type "str";
      bool = type "bool";
      port = type "port";
      package = type "package";
      nullOr = t: type "nullOr ${t.name}";
      listOf = t: type "listOf ${t.name}";
      ints.positive = type "positive int";
    };
  };

  pkgs = {
    # Keeps the text, so the generated files can be inspected.
    writeText = name: text: {
      outPath = "/nix/store/eval-${name}";
      inherit name text;
    };
    coreutils = fakePackage "coreutils";
    gnugrep = fakePackage "gnugrep";
    formats.json = _: { type = type "json"; };
    callPackage = _path: _args: fakePackage "hive-matrix";
    matrix-tuwunel = fakePackage "tuwunel";
    fluffychat-web = fakePackage "fluffychat-web";
  };

  # Option declarations -> their defaults.
  defaultsOf =
    decls:
    if decls._type or null == "option" then
      decls.default
    else
      builtins.mapAttrs (_: defaultsOf) (removeAttrs decls [ "domain" ]);

  module = import ../module.nix {
    inherit lib pkgs;
    options.services.hyperhive.domain.isDefined = domain != null;
    config = {
      system.stateVersion = "25.11";
      services.hyperhive = {
        inherit domain;
        matrix = recursiveUpdate (defaultsOf module.options.services.hyperhive.matrix) settings;
      };
    };
  };

  resolve =
    value:
    if builtins.isAttrs value && value._type or null == "if" then
      (if value.condition then resolve value.content else { })
    else if builtins.isAttrs value && value._type or null == "merge" then
      builtins.foldl' (acc: c: recursiveUpdate acc (resolve c)) { } value.contents
    else
      value;

  out = resolve module.config;
  container = out.containers.hive-matrix or null;
  service = out.systemd.services.hive-matrix or null;
  etcConfig = out.environment.etc."hive-matrix/config.yaml".source or null;
in
{
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (out.assertions or [ ]));
  enabled = out ? assertions;
  container =
    if container == null then
      null
    else
      {
        inherit (container) autoStart privateNetwork bindMounts;
        tuwunelSettings = container.config.services.matrix-tuwunel.settings;
        tuwunelPackage = "${container.config.services.matrix-tuwunel.package}";
        loadCredential = container.config.systemd.services.tuwunel.serviceConfig.LoadCredential;
        restartTriggers = container.config.systemd.services.tuwunel.restartTriggers;
      };
  service =
    if service == null then
      null
    else
      {
        inherit (service) requires after wantedBy;
        inherit (service.serviceConfig)
          ExecStart
          Restart
          NoNewPrivileges
          ProtectSystem
          ReadWritePaths
          ;
      };
  hiveMatrixConfig = if etcConfig == null then null else builtins.fromJSON etcConfig.text;
  configPathInExecStart = if etcConfig == null then null else "${etcConfig}";
  activation = out.system.activationScripts.hive-matrix.text or null;
  firewall = out.networking.firewall.allowedTCPPorts or [ ];
  tmpfiles = out.systemd.tmpfiles.rules or [ ];
  gateway =
    if out ? services.nginx then
      {
        inherit (out.services.nginx) enable;
        virtualHosts = builtins.mapAttrs (_: vh: builtins.attrNames vh.locations) out.services.nginx.virtualHosts;
        matrixProxy = (builtins.head (builtins.attrValues out.services.nginx.virtualHosts)).locations."/_matrix/".proxyPass;
      }
    else
      null;
}
