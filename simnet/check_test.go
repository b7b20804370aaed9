package simnet

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
)

func TestParseUUID(t *testing.T) {
	for i := 0; i < 1000; i++ {
		u := uuid.New()
		k, ok := parseUUID(u.String())
		assert.True(t, ok)
		var hi, lo uint64
		for j := 0; j < 8; j++ {
			hi = hi<<8 | uint64(u[j])
			lo = lo<<8 | uint64(u[8+j])
		}
		assert.Equal(t, mqMsgKey{hi, lo}, k)
	}
	for _, bad := range []string{"", "a", "0123abcg-0000-4000-8000-00000000abcd", "0123abcd+0000-4000-8000-00000000abcd",
		"0123ABCD-0000-4000-8000-00000000abcd", // upper case: kept as a string, so ids and keys stay one to one
		"0123abcd-0000-4000-8000-00000000abcde", "0123abcd-0000-4000-8000-00000000ab d"} {
		_, ok := parseUUID(bad)
		assert.False(t, ok, bad)
	}
}
