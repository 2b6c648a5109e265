package rocketchatvoip

import (
	"runtime/debug"
	"sync"

	"go.uber.org/zap"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
)

// Version is this release of the module. It is reported by
// 'caddy rocketchat-voip version', logged when the process first provisions
// a handler, and is the
// version label of caddy_rocketchat_voip_build_info, each beside the schema
// version this build migrates to. Bump it with CHANGELOG.md.
const Version = "v0.1.0"

// modulePath is the module's Go import path, as 'caddy build-info' lists it.
const modulePath = "github.com/edgevoip/caddy-rocketchat-voip"

// SchemaVersion is the schema version this build needs and migrates to.
func SchemaVersion() int { return schema.Latest() }

// moduleBuildVersion is the module's version as Go recorded it in the
// binary: the tag a build from the module proxy (xcaddy, go get) names,
// "(devel)" for the main module of a local build, "" when unknown.
func moduleBuildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	if info.Main.Path == modulePath {
		return info.Main.Version
	}
	for _, dep := range info.Deps {
		if dep.Path == modulePath {
			if dep.Replace != nil {
				return dep.Version + " => " + dep.Replace.Path
			}
			return dep.Version
		}
	}
	return ""
}

var versionLogged sync.Once

// logVersionOnce logs the module's version and schema version, once per
// process: the first config with a handler names the build it runs.
func logVersionOnce(logger *zap.Logger) {
	versionLogged.Do(func() {
		logger.Info("rocketchat_voip module", zap.String("version", Version), zap.Int("schema_version", SchemaVersion()),
			zap.String("module_build_version", moduleBuildVersion()))
	})
}
