// Every subcommand, imported for its registration side effect. Add one line per command module.
import "./bind.js";
import "./check.js";
import "./enroll.js";
import "./generate.js";
import "./identity.js";
import "./probe.js";
import "./proxy.js";
import "./status.js";
