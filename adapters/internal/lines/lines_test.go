package lines

import (
	"bufio"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRead(t *testing.T) {
	cases := []struct {
		name, in string
		max      int
		eofOK    bool
		want     string
		err      error
	}{
		{"line", "GET /a\nrest", 64, false, "GET /a", nil},
		{"exactly max", "12345\n", 5, false, "12345", nil},
		{"over max", "123456\n", 5, false, "", ErrTooLong},
		{"long line over the buffer", strings.Repeat("x", 5000) + "\n", 4096, false, "", ErrTooLong},
		{"long line within a larger max", strings.Repeat("x", 5000) + "\n", 8000, false, strings.Repeat("x", 5000), nil},
		{"eof without newline refused", "abc", 64, false, "", io.ErrUnexpectedEOF},
		{"eof without newline accepted", "abc", 64, true, "abc", nil},
		{"eof accepted but over max", "abcdef", 5, true, "", ErrTooLong},
		{"empty stream", "", 64, true, "", io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Read(bufio.NewReaderSize(strings.NewReader(tc.in), 16), tc.max, tc.eofOK)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
}
