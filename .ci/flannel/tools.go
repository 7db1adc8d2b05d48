//go:build tools

// Package build pins the real flanneld for cnilab's upstream labs: this
// module only exists to build github.com/flannel-io/flannel at the version
// go.mod requires (see build.sh).
package build

import _ "github.com/flannel-io/flannel"
