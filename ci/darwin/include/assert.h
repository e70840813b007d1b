/* Minimal <assert.h> for type-checking the *-apple-darwin targets on Linux
 * (scripts/check-macos); the real macOS build uses the SDK's header. */
#ifndef CONNECTOR_STUB_ASSERT_H
#define CONNECTOR_STUB_ASSERT_H
#ifdef NDEBUG
#define assert(x) ((void)0)
#else
#define assert(x) ((x) ? (void)0 : __builtin_trap())
#endif
#endif
