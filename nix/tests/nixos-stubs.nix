# Declarations of the NixOS options nix/module.nix sets or reads, with the types nixpkgs declares
# them with, so that nixpkgs' own `lib.evalModules` can evaluate the module without the rest of
# nixpkgs (see ./eval-nixos.nix). Each group names the nixpkgs file it mirrors. Only the options
# the module touches are declared, plus the assertions those nixpkgs modules make about them:
# setting anything else is an error here, as a misspelt option would be on NixOS.
{ lib, pkgs }:
let
  inherit (lib)
    mkOption
    mkOptionType
    mkEnableOption
    mkDefault
    mkIf
    types
    ;

  # --- nixos/lib/systemd-lib.nix ----------------------------------------------------------------
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  checkUnitConfig =
    group: checks: attrs:
    let
      # Applied to the whole attribute set, so mkIf/mkOverride wrappers are still there.
      defs = lib.mapAttrs (
        _: v: if v._type or "" == "override" || v._type or "" == "if" then v.content else v
      ) attrs;
      errors = lib.concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  assertValueOneOf =
    name: values: group: attr:
    lib.optional (
      attr ? ${name} && !lib.elem attr.${name} values
    ) "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";

  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ])
    (assertValueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];

  # --- nixos/lib/systemd-unit-options.nix -------------------------------------------------------
  unitOption = mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  unitList = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };

  commonUnitOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wantedBy = unitList;
      requiredBy = unitList;
      requires = unitList;
      wants = unitList;
      after = unitList;
      before = unitList;
      bindsTo = unitList;
      partOf = unitList;
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
    };
  };

  serviceOptions = {
    options = {
      environment = mkOption {
        type =
          with types;
          attrsOf (
            nullOr (oneOf [
              str
              path
              package
            ])
          );
        default = { };
      };
      path = mkOption {
        type =
          with types;
          listOf (oneOf [
            package
            str
          ]);
        default = [ ];
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };

  pathOptions = {
    options.pathConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };

  # --- nixos/modules/misc/assertions.nix --------------------------------------------------------
  assertionsModule = {
    options.assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    options.warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };

  # --- nixos/modules/system/boot/systemd.nix, systemd/tmpfiles.nix ------------------------------
  systemdModule = {
    options.systemd = {
      package = mkOption {
        type = types.package;
        default = pkgs.systemd;
      };
      services = mkOption {
        type = types.attrsOf (
          types.submodule [
            commonUnitOptions
            serviceOptions
          ]
        );
        default = { };
      };
      paths = mkOption {
        type = types.attrsOf (
          types.submodule [
            commonUnitOptions
            pathOptions
          ]
        );
        default = { };
      };
      tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
    };
  };

  # --- nixos/modules/config/users-groups.nix ----------------------------------------------------
  passwdEntry =
    type:
    lib.types.addCheck type (x: !(lib.hasInfix ":" x || lib.hasInfix "\n" x))
    // {
      name = "passwdEntry ${type.name}";
    };

  usersModule =
    { config, ... }:
    {
      options.users = {
        users = mkOption {
          type = types.attrsOf (
            types.submodule (
              { name, ... }:
              {
                options = {
                  name = mkOption {
                    type = passwdEntry types.str;
                    default = name;
                  };
                  description = mkOption {
                    type = passwdEntry types.str;
                    default = "";
                  };
                  uid = mkOption {
                    type = types.nullOr types.int;
                    default = null;
                  };
                  isSystemUser = mkOption {
                    type = types.bool;
                    default = false;
                  };
                  isNormalUser = mkOption {
                    type = types.bool;
                    default = false;
                  };
                  group = mkOption {
                    type = types.str;
                    default = "";
                  };
                  extraGroups = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                  };
                  home = mkOption {
                    type = passwdEntry types.path;
                    default = "/var/empty";
                  };
                };
              }
            )
          );
          default = { };
        };
        groups = mkOption {
          type = types.attrsOf (
            types.submodule (
              { name, ... }:
              {
                options = {
                  name = mkOption {
                    type = passwdEntry types.str;
                    default = name;
                  };
                  gid = mkOption {
                    type = types.nullOr types.int;
                    default = null;
                  };
                  members = mkOption {
                    type = types.listOf (passwdEntry types.str);
                    default = [ ];
                  };
                };
              }
            )
          );
          default = { };
        };
      };
      config.assertions = lib.concatLists (
        lib.mapAttrsToList (_: user: [
          {
            assertion =
              let
                isEffectivelySystemUser =
                  user.isSystemUser || (user.uid != null && user.uid < 1000 && !user.isNormalUser);
              in
              isEffectivelySystemUser != user.isNormalUser;
            message = "Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.";
          }
          {
            assertion = user.group != "";
            message = "users.users.${user.name}.group is unset.";
          }
        ]) config.users.users
      );
    };

  stateVersionModule.options.system.stateVersion = mkOption { type = types.str; };

  # --- nixos/modules/services/matrix/tuwunel.nix (options, and the config it sets) ------------
  tuwunelModule =
    { config, ... }:
    let
      cfg = config.services.matrix-tuwunel;
      format = pkgs.formats.toml { };
    in
    {
      options.services.matrix-tuwunel = {
        enable = mkEnableOption "tuwunel";
        package = lib.mkPackageOption pkgs "matrix-tuwunel" { };
        user = mkOption {
          type = types.nonEmptyStr;
          default = "tuwunel";
        };
        group = mkOption {
          type = types.nonEmptyStr;
          default = "tuwunel";
        };
        stateDirectory = mkOption {
          type = types.nonEmptyStr;
          default = "tuwunel";
        };
        extraEnvironment = mkOption {
          type = types.attrsOf types.str;
          default = { };
        };
        settings = mkOption {
          type = types.submodule {
            freeformType = format.type;
            options = {
              global.server_name = mkOption { type = types.nonEmptyStr; };
              global.address = mkOption {
                type = types.nullOr (types.listOf types.nonEmptyStr);
                default = null;
              };
              global.port = mkOption {
                type = types.listOf types.port;
                default = [ 6167 ];
              };
              # No default in nixpkgs from 2026 on, where lib gives a nullOr option without a
              # definition its emptyValue (null); the same meaning for older lib.
              global.unix_socket_path = mkOption {
                type = types.nullOr types.path;
                default = null;
              };
              global.unix_socket_perms = mkOption {
                type = types.ints.positive;
                default = 660;
              };
              global.max_request_size = mkOption {
                type = types.ints.positive;
                default = 20000000;
              };
              global.allow_registration = mkOption {
                type = types.bool;
                default = false;
              };
              global.allow_encryption = mkOption {
                type = types.bool;
                default = true;
              };
              global.allow_federation = mkOption {
                type = types.bool;
                default = true;
              };
              global.trusted_servers = mkOption {
                type = types.listOf types.nonEmptyStr;
                default = [ "matrix.org" ];
              };
            };
          };
          default = { };
          apply = lib.filterAttrsRecursive (_: v: v != null);
        };
      };
      config = mkIf cfg.enable {
        assertions = [
          {
            assertion = !(cfg.settings ? global.unix_socket_path) || !(cfg.settings ? global.address);
            message = "In `services.matrix-tuwunel.settings.global`, `unix_socket_path` and `address` cannot be set at the same time.";
          }
        ];
        users.users = mkIf (cfg.user == "tuwunel") {
          tuwunel = {
            inherit (cfg) group;
            home = cfg.settings.global.database_path;
            isSystemUser = true;
          };
        };
        users.groups = mkIf (cfg.group == "tuwunel") { tuwunel = { }; };
        services.matrix-tuwunel.settings.global.database_path = "/var/lib/${cfg.stateDirectory}/";
        systemd.services.tuwunel = {
          description = "Tuwunel Matrix Server";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          environment.TUWUNEL_CONFIG = format.generate "tuwunel.toml" cfg.settings;
          startLimitBurst = 5;
          startLimitIntervalSec = 60;
          serviceConfig = {
            Type = "notify";
            DynamicUser = true;
            User = cfg.user;
            Group = cfg.group;
            PrivateUsers = true;
            ProtectSystem = "strict";
            StateDirectory = cfg.stateDirectory;
            StateDirectoryMode = "0700";
            ExecStart = lib.getExe cfg.package;
            Restart = "on-failure";
            RestartSec = 10;
          };
        };
      };
    };

  pkgsModule = {
    _module.args.pkgs = pkgs;
  };

  # What a NixOS container's `config` is evaluated with here: the same stubs, as eval-config.nix
  # would evaluate it with all of NixOS.
  containerModules = [
    pkgsModule
    assertionsModule
    systemdModule
    usersModule
    stateVersionModule
    tuwunelModule
  ];

  # --- nixos/modules/virtualisation/nixos-containers.nix -----------------------------------------
  containersModule = {
    options.containers = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              config = mkOption {
                type = mkOptionType {
                  name = "Toplevel NixOS config";
                  merge =
                    _loc: defs:
                    (lib.evalModules {
                      modules = containerModules ++ map (x: x.value) defs;
                      prefix = [
                        "containers"
                        name
                      ];
                    }).config;
                };
              };
              autoStart = mkOption {
                type = types.bool;
                default = false;
              };
              privateNetwork = mkOption {
                type = types.bool;
                default = false;
              };
              privateUsers = mkOption {
                type = types.either types.ints.u32 (
                  types.enum [
                    "no"
                    "identity"
                    "pick"
                  ]
                );
                default = "no";
              };
              bindMounts = mkOption {
                type = types.attrsOf (
                  types.submodule (
                    { name, ... }:
                    {
                      options = {
                        mountPoint = mkOption { type = types.str; };
                        hostPath = mkOption {
                          type = types.nullOr types.str;
                          default = null;
                        };
                        isReadOnly = mkOption {
                          type = types.bool;
                          default = true;
                        };
                      };
                      config.mountPoint = mkDefault name;
                    }
                  )
                );
                default = { };
              };
            };
          }
        )
      );
      default = { };
    };
  };

  # --- nixos/modules/services/web-servers/nginx/{default,vhost-options,location-options}.nix ----
  nginxModule =
    { config, ... }:
    {
      options.services.nginx = {
        enable = mkEnableOption "Nginx Web Server";
        recommendedProxySettings = mkOption {
          type = types.bool;
          default = false;
        };
        virtualHosts = mkOption {
          type = types.attrsOf (
            types.submodule {
              options = {
                forceSSL = mkOption {
                  type = types.bool;
                  default = false;
                };
                enableACME = mkOption {
                  type = types.bool;
                  default = false;
                };
                locations = mkOption {
                  type = types.attrsOf (
                    types.submodule {
                      options = {
                        proxyPass = mkOption {
                          type = types.nullOr types.str;
                          default = null;
                        };
                        proxyWebsockets = mkOption {
                          type = types.bool;
                          default = false;
                        };
                        tryFiles = mkOption {
                          type = types.nullOr types.str;
                          default = null;
                        };
                        root = mkOption {
                          type = types.nullOr types.path;
                          default = null;
                        };
                        alias = mkOption {
                          type = types.nullOr types.path;
                          default = null;
                        };
                        extraConfig = mkOption {
                          type = types.lines;
                          default = "";
                        };
                        priority = mkOption {
                          type = types.int;
                          default = 1000;
                        };
                        recommendedProxySettings = mkOption {
                          type = types.bool;
                          default = config.services.nginx.recommendedProxySettings;
                        };
                      };
                    }
                  );
                  default = { };
                };
              };
            }
          );
          default = { };
        };
      };
    };

  # --- nixos/modules/services/networking/firewall.nix -------------------------------------------
  firewallModule.options.networking.firewall.allowedTCPPorts = mkOption {
    type = types.listOf types.port;
    default = [ ];
    apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
  };

  # --- nixos/modules/system/activation/activation-script.nix ------------------------------------
  activationModule.options.system.activationScripts = mkOption {
    type = types.attrsOf (
      types.either types.str (
        types.submodule {
          options = {
            deps = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            text = mkOption { type = types.lines; };
            supportsDryActivation = mkOption {
              type = types.bool;
              default = false;
            };
          };
        }
      )
    );
    default = { };
  };

  # --- nixos/modules/system/etc/etc.nix, config/system-path.nix ---------------------------------
  environmentModule.options.environment = {
    systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    etc = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
              };
              target = mkOption {
                type = types.str;
                default = name;
              };
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              source = mkOption { type = types.path; };
              mode = mkOption {
                type = types.str;
                default = "symlink";
              };
            };
          }
        )
      );
      default = { };
    };
  };

  # --- nixos/modules/security/polkit.nix -------------------------------------------------------
  polkitModule.options.security.polkit = {
    enable = mkEnableOption "polkit";
    extraConfig = mkOption {
      type = types.lines;
      default = "";
    };
  };
in
{
  inherit containerModules;

  hostModules = [
    pkgsModule
    assertionsModule
    systemdModule
    usersModule
    stateVersionModule
    containersModule
    nginxModule
    firewallModule
    activationModule
    environmentModule
    polkitModule
  ];
}
