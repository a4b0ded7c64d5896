//go:build tools

// Package kwokbinary pins kwok, which simulates GPU nodes in the e2e tier.
package kwokbinary

import _ "sigs.k8s.io/kwok/cmd/kwok"
