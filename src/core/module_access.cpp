#include "core/module_access.h"

#include <torch/nn/modules/container/modulelist.h>

namespace peft::detail {
namespace {

// children_ and buffers_ are private. Names in an explicit instantiation are exempt from access checking
// ([temp.spec.general]/6), so instantiating this template with &Module::children_ is the one
// standard-conforming way to obtain the pointer-to-member; the friend function hands it out.
template <class Tag, typename Tag::type Member>
struct MemberPointer {
  friend typename Tag::type member_pointer(Tag) { return Member; }
};

struct ChildrenTag {
  using type = ChildMap torch::nn::Module::*;
  friend type member_pointer(ChildrenTag);
};
struct BuffersTag {
  using type = TensorMap torch::nn::Module::*;
  friend type member_pointer(BuffersTag);
};

struct ModulesTag {
  using type = ModuleVector torch::nn::ModuleListImpl::*;
  friend type member_pointer(ModulesTag);
};

template struct MemberPointer<ChildrenTag, &torch::nn::Module::children_>;
template struct MemberPointer<ModulesTag, &torch::nn::ModuleListImpl::modules_>;
template struct MemberPointer<BuffersTag, &torch::nn::Module::buffers_>;

}  // namespace

ChildMap torch::nn::Module::*const kChildrenMember = member_pointer(ChildrenTag{});
TensorMap torch::nn::Module::*const kBuffersMember = member_pointer(BuffersTag{});

ModuleVector& modules_of(torch::nn::ModuleListImpl& list) {
  static ModuleVector torch::nn::ModuleListImpl::*const member = member_pointer(ModulesTag{});
  return list.*member;
}

}  // namespace peft::detail
