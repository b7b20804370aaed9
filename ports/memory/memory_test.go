package memory_test

import (
	"testing"

	"github.com/goop-p2p/goop/ports"
	"github.com/goop-p2p/goop/ports/memory"
	"github.com/goop-p2p/goop/ports/transporttest"
)

func TestTransportContract(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (a, b ports.Transport) {
		n := memory.NewNetwork()
		return n.Join("peer-a"), n.Join("peer-b")
	})
}
